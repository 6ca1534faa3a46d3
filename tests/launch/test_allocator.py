"""CPU training processes run on jemalloc, which keeps freed pages for the next step (launch/allocator.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from neurograph.launch import allocator
from neurograph.launch.allocator import JEMALLOC_CONF, find_jemalloc, with_allocator
from neurograph.launch.local import worker_env
from tests.conftest import REPO

# Allocates and frees a 256 MB tensor 8 times, touching every page; prints the page faults of the loop.
STEPS = """
import json, resource, torch
torch.empty(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(64 * 2**20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(dict(faults=faults, jemalloc="libjemalloc" in open("/proc/self/maps").read())))
"""


def _run_steps(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and glibc's unmapping are Linux matters")
def test_training_processes_get_jemalloc_and_reuse_freed_pages():
    assert find_jemalloc(), "jemalloc not found: `make jemalloc` (part of `make install`) unpacks it into .venv"
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    glibc = _run_steps(clean)
    jemalloc = _run_steps(with_allocator(clean, "jemalloc"))
    assert jemalloc["jemalloc"] and not glibc["jemalloc"]
    # glibc maps a fresh 256 MB (65,536 pages) for every tensor; jemalloc faults the first one in only
    assert glibc["faults"] > 6 * 65536 * 0.9
    assert jemalloc["faults"] < 2 * 65536, jemalloc


def test_the_local_launcher_preloads_jemalloc_for_cpu_ranks_unless_told_otherwise():
    env = worker_env(2, "jemalloc")
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    if sys.platform == "linux":
        assert "jemalloc" in env["LD_PRELOAD"] and env["MALLOC_CONF"] == JEMALLOC_CONF
    assert "jemalloc" not in worker_env(2, "system").get("LD_PRELOAD", "")


def test_threads_the_user_set_are_kept_and_oversubscription_is_named(monkeypatch, capsys):
    cores = os.cpu_count() or 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores))
    assert worker_env(2, "system")["OMP_NUM_THREADS"] == str(cores)
    assert f"OMP_NUM_THREADS={cores} for each of 2 processes oversubscribes {cores} cores" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker_env(cores, "system")
    assert capsys.readouterr().err == ""


def test_what_the_user_set_is_kept(monkeypatch):
    mine = {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2", "MALLOC_CONF": "narenas:2"}
    assert with_allocator(mine, "jemalloc") == mine  # jemalloc preloaded already: nothing to add
    monkeypatch.setenv(allocator.JEMALLOC_ENV, "/somewhere/libjemalloc.so.2")
    env = with_allocator({"LD_PRELOAD": "libfoo.so", "MALLOC_CONF": "narenas:2"}, "jemalloc")
    if sys.platform == "linux":
        assert env == {"LD_PRELOAD": "/somewhere/libjemalloc.so.2 libfoo.so", "MALLOC_CONF": "narenas:2"}
    with pytest.raises(ValueError, match="tcmalloc.*jemalloc"):
        with_allocator({}, "tcmalloc")


def test_without_jemalloc_training_goes_on_with_glibc_and_a_warning(monkeypatch, tmp_path):
    monkeypatch.delenv(allocator.JEMALLOC_ENV, raising=False)
    monkeypatch.setattr(allocator, "VENV_JEMALLOC", tmp_path / "absent.so")
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)  # no system copy either
    if sys.platform == "linux":
        with pytest.warns(RuntimeWarning, match="jemalloc not found"):
            assert with_allocator({"A": "1"}, "jemalloc") == {"A": "1"}
