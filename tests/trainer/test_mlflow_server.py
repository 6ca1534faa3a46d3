"""Training against a real MLflow tracking server (`mlflow server`, loopback): the server
stopped and started again mid-run loses nothing, and a run resumes from its checkpoint
artifacts on a machine that has none of the run's files (`--resume-from mlflow:RUN_ID`).

One server for the module, in its own session, ended by process group at teardown."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from .runs import TINY_TRANSFORMER, read_metrics, running, seed_mlflow_store, wait_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """`mlflow server` with a sqlite backend and proxied artifacts in a local directory."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        seed_mlflow_store(self.root)  # the named experiments of the tests take the server's artifact root
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
                time.sleep(0.25)
        raise TimeoutError("mlflow server did not become healthy")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        for s, wait in ((sig, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, s)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        self.proc.wait(timeout=5)
        try:  # the server's children (uvicorn) share its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_config(tmp_path: Path, data_dir: Path, name: str, uri: str, **tracking) -> Path:
    cfg = {
        "model": TINY_TRANSFORMER,
        "data": {"path": str(data_dir), "seq_len": 64},
        "trainer": {"max_steps": 16, "micro_batch_size": 4, "lr": 3e-3, "schedule": "onecycle", "warmup_steps": 3,
                    "eval_every": 0, "eval_batches": 2, "log_every": 4, "seed": 7, "run_dir": str(tmp_path / name)},
        "tracking": {"experiment": "server-tests", "uri": uri, "retry_interval": 1.0, **tracking},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "neurograph.launch.cli", "train", "--config", str(config), *args]


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli(config, *args), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def steps_written(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def history_steps(uri: str, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "train/loss"))


def test_server_stopped_mid_run_loses_nothing(mlflow_server, tmp_path, char_data):
    config = write_config(tmp_path, char_data, "outage", mlflow_server.uri, finish_timeout=180,
                          system_metrics_every=1.0)
    run_dir = tmp_path / "outage"
    steps = 40  # ~2 s of training: the server is killed right after the run is created
    log = tmp_path / "train.log"
    with running(cli(config, "trainer.num_processes=1", f"trainer.max_steps={steps}"), log) as proc:
        wait_for(lambda: (run_dir / "mlflow_run_id").is_file(), proc, log, poll=0.02)  # the run exists
        mlflow_server.stop(signal.SIGKILL)
        # training goes on while the server is down (it then waits for the server to finish)
        wait_for(lambda: steps_written(run_dir) >= steps, proc, log, poll=0.2)
        mlflow_server.start()
        code = proc.wait(timeout=300)
    output = log.read_text()
    assert code == 0, output[-6000:]
    assert "unreachable" in output and "reachable again" in output, output[-6000:]
    assert "dropped" not in output
    run_id = (run_dir / "mlflow_run_id").read_text()
    assert history_steps(mlflow_server.uri, run_id) == list(range(1, steps + 1))  # all of them, none twice
    assert not (run_dir / "mlflow_pending.jsonl").exists()


def test_resume_from_mlflow_on_a_machine_without_the_files(mlflow_server, tmp_path, char_data):
    common = ("trainer.num_processes=2", "deepspeed.zero_stage=2", "trainer.checkpoint_every=4")
    full = write_config(tmp_path, char_data, "full", mlflow_server.uri)
    run_cli(full, *common)
    expected = [r["train/loss"] for r in read_metrics(tmp_path / "full")]

    config = write_config(tmp_path, char_data, "stopped", mlflow_server.uri, checkpoint_artifacts_every=2)
    run_dir = tmp_path / "stopped"
    run_cli(config, *common, "trainer.exit_after=8")  # checkpoints 4 and 8; 8 logged (every 2nd + the last)
    run_id = (run_dir / "mlflow_run_id").read_text()
    shutil.rmtree(run_dir)  # none of the run's files are left

    proc = run_cli(config, *common, "--resume-from", f"mlflow:{run_id}")
    assert "downloaded checkpoint step_00000008" in proc.stderr + proc.stdout
    resumed = read_metrics(run_dir)
    assert [r["step"] for r in resumed] == list(range(9, 17))
    assert max(abs(r["train/loss"] - expected[r["step"] - 1]) for r in resumed) < 1e-6
    assert (run_dir / "mlflow_run_id").read_text() == run_id  # the same MLflow run continued

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    assert history_steps(mlflow_server.uri, run_id) == list(range(1, 17))
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert max(abs(losses[s] - expected[s - 1]) for s in range(1, 17)) < 1e-6
    logged = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert logged == ["checkpoints/step_00000008", "checkpoints/step_00000016"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_resume_from_unknown_run_fails_cleanly(mlflow_server, tmp_path, char_data):
    config = write_config(tmp_path, char_data, "unknown", mlflow_server.uri)
    proc = subprocess.run(cli(config, "--resume-from", "mlflow:0123456789abcdef"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--resume-from mlflow:0123456789abcdef" in proc.stderr, proc.stderr[-3000:]
