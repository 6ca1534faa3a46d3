"""The memory allocator of CPU training processes: jemalloc, preloaded, keeping freed pages.

A training step allocates and frees the same large activations every step. glibc malloc
serves every block over 32 MB with a fresh mmap and unmaps it on free, so each step pays the
kernel to fault in and zero gigabytes of new pages: one INN step of configs/inn_text8.yaml at
batch 4 x 256 spent 26 of its 94 CPU seconds in the kernel, 7.8M page faults. jemalloc with
purging off (`MALLOC_CONF` below) hands the same pages back instead: that step 22.8 -> 15.2 s,
peak RSS 1.85 -> 1.57 GB (BENCHMARKS.md, "INN"). It has to be loaded before the process starts
(LD_PRELOAD), so launchers put it into their workers' environment; `make install` unpacks
Debian's libjemalloc2 into the virtual environment when the system has none.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

ALLOCATORS = ("jemalloc", "system")
# Never return freed pages to the OS (the default decays them within seconds, and the next step
# faults them in again); the RSS then stays at the step's peak, like a CUDA caching allocator's.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
JEMALLOC_ENV = "NEUROGRAPH_JEMALLOC"  # path of libjemalloc.so.2, overriding the search
VENV_JEMALLOC = Path(sys.prefix) / "lib" / "jemalloc" / "libjemalloc.so.2"  # where `make install` puts it


def find_jemalloc() -> Optional[str]:
    """What LD_PRELOAD should name: $NEUROGRAPH_JEMALLOC, the virtual environment's copy, or the
    system's soname (on the loader's path on every node of an image that installs it); None if none."""
    if os.environ.get(JEMALLOC_ENV):
        return os.environ[JEMALLOC_ENV]
    if VENV_JEMALLOC.exists():
        return str(VENV_JEMALLOC)
    return ctypes.util.find_library("jemalloc")


def with_allocator(env: dict[str, str], allocator: str) -> dict[str, str]:
    """`env` for a CPU training process, with jemalloc preloaded when `allocator` is "jemalloc"
    (kept as it is when something already preloads jemalloc, or off Linux, where LD_PRELOAD of a .so
    does not apply; glibc with a warning when jemalloc cannot be found)."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"unknown allocator {allocator!r}; choose from {ALLOCATORS}")
    if allocator == "system" or sys.platform != "linux" or "jemalloc" in env.get("LD_PRELOAD", ""):
        return env
    lib = find_jemalloc()
    if lib is None:
        warnings.warn("jemalloc not found (`make install` fetches it; or apt install libjemalloc2, or set "
                      f"{JEMALLOC_ENV}): CPU training runs on glibc malloc, up to ~1.5x slower per step",
                      RuntimeWarning, stacklevel=2)
        return env
    preload = " ".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return {**env, "LD_PRELOAD": preload, "MALLOC_CONF": env.get("MALLOC_CONF", JEMALLOC_CONF)}


def malloc_in_use() -> str:
    """The allocator this process runs on, for its log: jemalloc's path when it is loaded."""
    try:
        maps = Path("/proc/self/maps").read_text().split()
    except OSError:  # not Linux
        return "the C library's malloc"
    return next((f"jemalloc ({p})" for p in maps if "libjemalloc" in p), "the C library's malloc")
