"""The GPU scripts cannot run here, so their plumbing is checked on CPU: bench/kernels.py's row
filters (through its --smoke mode: Triton interpreted, tiny sizes), bench/gpu_check.sh's sections and
their time limits, and the verdicts read from the tables, so a GPU session does not spend its minutes on
a script error."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_gpu_check_dry_run_fits_one_ten_minute_call(tmp_path):
    """Sections 0-6 under time limits that add up to at most 540 s, at most 6 files, nothing run."""
    assert _run("bash", "-n", "bench/gpu_check.sh").returncode == 0
    done = _run("bash", "bench/gpu_check.sh", "--dry-run", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(".")[0] for line in lines[:7]] == [str(n) for n in range(7)], done.stdout
    total = int(re.search(r"total (\d+) s of time limits", done.stdout).group(1))
    assert total == sum(int(re.search(r"(\d+) s  ->", line).group(1)) for line in lines[:7]) and total <= 540
    files = done.stdout.split("files: ")[1].split()
    assert len(files) <= 6 and "verdicts.txt" in files and not (tmp_path / "out").exists()


def test_gpu_check_runs_only_the_chosen_sections_and_ends_with_the_verdicts(tmp_path):
    done = _run("bash", "bench/gpu_check.sh", str(tmp_path / "out"), SECTIONS="9", PY=sys.executable)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines[:4]] == ["not run"] * 4, done.stdout
    assert lines[4].startswith(f"== done: {tmp_path / 'out'}") and len(lines) == 5
    assert (tmp_path / "out" / "verdicts.txt").read_text().splitlines() == lines[:4]


def test_verdicts_read_the_tables_bench_kernels_prints(tmp_path):
    """Rows of a real bench/kernels.py --smoke table parse; the goals' arithmetic on rows of known times."""
    from bench.gpu_verdicts import op_rows, verdicts

    smoke = _run(sys.executable, "bench/kernels.py", "--smoke", "--sections", "ops", "--ops", "integrator-128,scan",
                 "--impls", "eager,triton")
    assert smoke.returncode == 0, smoke.stderr
    parsed = op_rows(smoke.stdout)
    assert set(parsed) == {("integrator (K iters, D=128)", "eager"), ("integrator (K iters, D=128)", "triton"),
                           ("selective scan", "eager"), ("selective scan", "triton")}
    assert all(row["ms"] > 0 for row in parsed.values())

    def row(op: str, impl: str, ms: float, bw: str = "   n/a") -> str:
        return f"{op:28} {impl:10} {ms:9.3f} {1.0:8.1f} {bw:>6} {1.0:8.2f} {'n/a':>7}"

    (tmp_path / "kernels.txt").write_text("\n".join([
        row("integrator (K iters, D=128)", "compiled", 3.0), row("integrator (K iters, D=128)", "triton", 1.5),
        row("integrator (K iters, D=1728)", "compiled", 3.2), row("integrator (K iters, D=1728)", "triton", 2.0),
        row("selective scan", "triton", 2.0, " 41.0%"), row("selective scan", "mamba-ssm", 1.7, " 48.0%")]))
    (tmp_path / "training.txt").write_text(f"{'INN paper (text8)':28} {30.0:11.2f} {9.0:9.2f} {30 / 9:8.2f}x\n")
    (tmp_path / "inl_1.1b.json").write_text(json.dumps([
        {"device": "NVIDIA H100", "integrator_impl": "reference", "mfu": 0.06},
        {"device": "NVIDIA H100", "integrator_impl": "triton", "error": "OutOfResources"}]))
    found = [line.split(": ", 1)[1].split(" (")[0] for line in verdicts(tmp_path)]
    # MFU 6% < 40%; Triton 2.0x and 1.6x the compiled loop; scan 41% of peak but 2.0 / 1.7 = 1.18x mamba-ssm's time;
    # INN 3.33x
    assert found == ["not met", "met", "met", "met"], verdicts(tmp_path)


def test_training_runs_without_ray_or_mlflow_when_tracking_is_off(tmp_path, char_data):
    """What bench/gpu_wheels.sh leaves out: `neurograph train` (CLI, torchrun, rank) with tracking off, while
    importing ray or mlflow fails in every process (modules that raise, first on PYTHONPATH)."""
    from tests.trainer.runs import read_metrics, train_command

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("ray", "mlflow"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on this node')\n")
    cmd = train_command(tmp_path, char_data, "run", "trainer.num_processes=1", "trainer.max_steps=2")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(blocked)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def _lock_lines(*names: str) -> list[str]:
    """requirements/cpu.txt's lines (with their markers) pinning these packages."""
    lines = (REPO / "requirements" / "cpu.txt").read_text().splitlines()
    return [line for line in lines if line.split("==")[0] in names]


@pytest.mark.slow  # ~30-60 s: the wheels (from the package index; DeepSpeed's built), a venv, one 2-rank run
def test_gpu_wheels_are_all_a_stock_python_needs(tmp_path, char_data):
    """A bare GPU machine rehearsed on CPU: a Python with torch, triton and numpy only (a stock CUDA image's, their
    CPU builds here) gets bench/gpu_wheels.sh's set through gpu_check.sh's own section 0 (offline, no dependency
    resolved), then trains from outside the checkout with tracking off, and collects section 1's tests."""
    from tests.launch.test_packaging import clean_env, torch_sources, uv
    from tests.trainer.runs import read_metrics, train_command

    sources = torch_sources()
    wheels, stock = tmp_path / "wheels", tmp_path / "stock"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    built = subprocess.run(["bash", "bench/gpu_wheels.sh", str(wheels)], cwd=REPO, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYVER": version})
    assert built.returncode == 0, built.stderr[-3000:]
    assert not any(w.name.startswith(("ray-", "mlflow")) for w in wheels.iterdir())
    (tmp_path / "image.txt").write_text("\n".join(_lock_lines("torch", "triton", "numpy")) + "\n")
    subprocess.run([uv(), "venv", "--seed", str(stock), "--python", sys.executable], check=True, capture_output=True,
                   timeout=120)
    python = str(stock / "bin" / "python")
    image = subprocess.run([uv(), "pip", "install", "--python", python, *sources, "-r", str(tmp_path / "image.txt")],
                           capture_output=True, text=True, timeout=900)
    assert image.returncode == 0, image.stderr[-3000:]

    section0 = _run("bash", "bench/gpu_check.sh", str(tmp_path / "out"), SECTIONS="0", PY=python, WHEELS=str(wheels))
    device = (tmp_path / "out" / "device.txt").read_text()
    assert section0.returncode == 0 and "no CUDA device" in device and "install failed" not in device, device

    home = tmp_path / "elsewhere"  # outside the checkout: the installed wheel provides neurograph
    home.mkdir()
    env = {**clean_env(), "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}  # no C++ build: dropout 0
    cmd = train_command(tmp_path, char_data, "run", "trainer.num_processes=2", "trainer.max_steps=2")
    done = subprocess.run([python, *cmd[1:]], cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]

    collect = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                              *re.findall(r"tests/kernels/\S+\.py", (REPO / "bench" / "gpu_check.sh").read_text())],
                             cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert collect.returncode == 0 and re.search(r"\d+ tests collected", collect.stdout), collect.stdout[-3000:]
