"""The GPU scripts cannot run here, so their plumbing is checked on CPU: bench/kernels.py's row
filters (through its --smoke mode: Triton interpreted, tiny sizes) and bench/gpu_check.sh's section
selection, so a GPU session does not spend its minutes on a script error."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env})


def test_kernel_bench_prints_the_chosen_rows_and_rejects_unknown_names():
    done = _run(sys.executable, "bench/kernels.py", "--smoke", "--sections", "ops", "--ops", "dense-attention",
                "--impls", "eager,triton")
    assert done.returncode == 0, done.stderr
    rows = [line.split()[:4] for line in done.stdout.splitlines() if line.startswith("dense neuron attention")]
    assert [row[3] for row in rows] == ["eager", "triton"] and "training step" not in done.stdout
    bad = _run(sys.executable, "bench/kernels.py", "--smoke", "--ops", "scan,flash")
    assert bad.returncode == 2 and "--ops 'scan,flash'" in bad.stderr and "integrator-1728" in bad.stderr


def test_gpu_check_parses_and_runs_only_the_chosen_sections(tmp_path):
    assert _run("bash", "-n", "bench/gpu_check.sh").returncode == 0
    done = _run("bash", "bench/gpu_check.sh", str(tmp_path / "out"), SECTIONS="9")
    assert done.returncode == 0, done.stderr
    assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [f"== done: {tmp_path / 'out'}"]
