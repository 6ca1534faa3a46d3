"""JIT-built C++ CPU kernels (torch.utils.cpp_extension): one loader shared by every op.

Each op's source, kernels/<op>/cpu.cpp, builds on first use (a C++ compiler and ninja; tens of seconds
once, then cached by torch in ~/.cache/torch_extensions; concurrent processes wait on torch's build
lock); it includes the shared headers of kernels/ (cpu_math.h). A build is named after the op, the
source's path and content and those headers, so
checkouts and edited copies each keep their own build instead of rebuilding one shared folder in turn.
A build killed mid-way leaves torch's build lock behind, on which every later load would wait forever:
`clear_stale_build_locks` removes such locks (ours and DeepSpeed's ops alike) before a load.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
import warnings
from pathlib import Path


# at::parallel_for is header code that parallelises through `#pragma omp`: without -fopenmp the
# pragma is ignored and a kernel runs on one thread. Apple's clang has no -fopenmp (one thread there).
_OPENMP = () if sys.platform == "darwin" else ("-fopenmp",)


KERNELS_DIR = Path(__file__).resolve().parent


def build_name(source: Path, include_dir: Path = KERNELS_DIR) -> str:
    """The build's name: the op (the source's folder) and a hash of the source's path, its content and the
    headers of `include_dir` (torch's own rebuild check sees the listed sources only, not what they include)."""
    headers = b"".join(h.read_bytes() for h in sorted(include_dir.glob("*.h")))
    key = hashlib.sha1(str(source.resolve()).encode() + source.read_bytes() + headers).hexdigest()[:12]
    return f"neurograph_{source.parent.name}_{source.stem}_{key}"


STALE_LOCK_AGE_S = 10.0  # a lock younger than this may have just been taken: never judged stale


def clear_stale_build_locks() -> list[Path]:
    """Remove the build locks in torch's extensions root that no live process holds. The builder keeps
    its `lock` file open for the whole build (torch.utils.file_baton), so an old lock that no process of
    this user has open was left by a build killed mid-way (Ctrl-C, a deadline's SIGTERM): without this,
    every later process loading that extension waits on it forever. Returns the locks removed."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    locks = [*root.glob("*/lock"), *root.glob("*/*/lock")]  # <root>/<build>/lock, <root>/<py>_<accelerator>/<build>/lock
    if not locks:
        return []
    import psutil

    held = set()
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is not None and proc.info["uids"].real == os.getuid():
                held.update(f.path for f in proc.open_files())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    removed = []
    for lock in locks:
        try:  # judged after the scan: a lock taken anew since the glob is young, so kept
            stale = str(lock) not in held and time.time() - lock.stat().st_mtime > STALE_LOCK_AGE_S
        except FileNotFoundError:  # released meanwhile
            continue
        if stale:
            lock.unlink(missing_ok=True)
            removed.append(lock)
            warnings.warn(f"removed the stale build lock {lock}: a build killed mid-way left it and no process "
                          "holds it", RuntimeWarning, stacklevel=2)
    return removed


@functools.cache
def load_cpu_extension(source_name: str):
    """The compiled module of kernels/`source_name`, e.g. "dropout/cpu.cpp" (raises when it cannot be built)."""
    from torch.utils.cpp_extension import load

    source = KERNELS_DIR / source_name
    clear_stale_build_locks()
    # Fresh lists each call: torch appends its own flags to extra_ldflags in place, and a shared list
    # would change the next build's flags (and so make torch rebuild whichever kernel loads next).
    return load(name=build_name(source), sources=[str(source)], extra_include_paths=[str(KERNELS_DIR)],
                extra_cflags=["-O3", "-march=native", "-ffast-math", *_OPENMP], extra_ldflags=list(_OPENMP),
                verbose=False)


@functools.cache
def cpu_extension_available(source_name: str) -> bool:
    """True when kernels/`source_name` builds here; otherwise warns once (callers then take
    their PyTorch path). A copy without its C++ sources (a Hugging Face export) quietly says no."""
    if not (KERNELS_DIR / source_name).exists():
        return False
    try:
        load_cpu_extension(source_name)
        return True
    except Exception as err:  # no compiler, no ninja, a failed build: all mean "use PyTorch"
        warnings.warn(f"C++ kernel {source_name} unavailable ({type(err).__name__}: {err}); using PyTorch",
                      RuntimeWarning, stacklevel=2)
        return False
