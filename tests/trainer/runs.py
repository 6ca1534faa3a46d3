"""End-to-end training runs for tests: `neurograph train` in a subprocess (real torchrun ranks,
real DeepSpeed engines on gloo), returning the records of the run's metrics file; and a
background process to act on while it runs (`running`, `wait_for`)."""
from __future__ import annotations

import atexit
import contextlib
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml

TINY_TRANSFORMER = {"arch": "transformer", "d_model": 48, "n_layer": 2, "n_head": 4, "d_ff": 96, "max_seq_len": 64}

STEPS = 12


def train(tmp_path: Path, data_dir: Path, name: str, *overrides: str, resume: bool = False,
          model: Optional[dict] = None, tracking: bool = False) -> list[dict]:
    cmd = train_command(tmp_path, data_dir, name, *overrides, resume=resume, model=model, tracking=tracking)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return read_metrics(tmp_path / name)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_command(tmp_path: Path, data_dir: Path, name: str, *overrides: str, resume: bool = False,
                  model: Optional[dict] = None, tracking: bool = False) -> list[str]:
    """`neurograph train` of the test config (run directory `tmp_path/name`). MLflow tracking only
    where a test looks at it: starting it costs a launch ~7 s (importing mlflow, opening the store)."""
    run_dir = tmp_path / name
    cfg = {
        "model": model or TINY_TRANSFORMER,
        "data": {"path": str(data_dir), "seq_len": 64},
        "trainer": {"max_steps": STEPS, "micro_batch_size": 4, "lr": 3e-3, "schedule": "onecycle", "warmup_steps": 3,
                    "eval_every": 0, "eval_batches": 2, "log_every": 4, "seed": 7, "run_dir": str(run_dir)},
        "tracking": {"enabled": tracking, "experiment": "tests"},
    }
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    if tracking and not any(o.startswith("tracking.uri=") for o in overrides):
        seed_mlflow_store(run_dir)
    cmd = [sys.executable, "-m", "neurograph.launch.cli", "train", "--config", str(config_file), *overrides]
    if resume:
        cmd.append("--resume")
    return cmd


def seed_mlflow_store(folder: Path) -> None:
    """Give a new run directory (or server root) the MLflow sqlite store `folder/mlflow.db` the
    trainer (or `mlflow server`) would create, tables already made: a copy instead of seconds of
    schema migrations each time."""
    if not (folder / "mlflow.db").exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_mlflow_store(), folder / "mlflow.db")


@functools.cache
def _empty_mlflow_store() -> Path:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="ng-mlflow-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def losses(records: list[dict]) -> list[float]:
    return [r["train/loss"] for r in records]


@contextlib.contextmanager
def running(cmd: list[str], log_path: Path, **popen) -> Iterator[subprocess.Popen]:
    """A subprocess writing stdout and stderr to `log_path`; killed on exit if still running."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log_path: Path, timeout: float = 300,
             poll: float = 0.05) -> None:
    """Poll until `condition()` holds; fail with the log's tail if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-5000:]
        time.sleep(poll)
