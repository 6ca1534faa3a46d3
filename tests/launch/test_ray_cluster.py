"""The Ray launcher on a real local Ray cluster (`ray start --head`, loopback only), jobs sent
with `ray job submit --working-dir . -- neurograph train ... launcher.kind=ray`:
equivalence with the local launcher across a stopped and a resumed job, automatic recovery
from a SIGKILLed worker within the resumed job, and an invalid config failing at submission time.

One cluster for the module; every Ray process runs in the cluster's own session and is
ended by process group at teardown (never `ray stop`, which would end any Ray on the machine)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.trainer.runs import TINY_TRANSFORMER, losses, running, seed_mlflow_store, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = 24
COMMON = ("trainer.checkpoint_every=4", f"trainer.max_steps={STEPS}", "deepspeed.zero_stage=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # it answers
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a process started with start_new_session=True and everything in its session."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            proc.poll()
            time.sleep(0.2)
    proc.wait(timeout=5)


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    # .venv/bin last: `neurograph` is found, but `ninja` stays the one the local runs use (two ninja
    # versions alternating make DeepSpeed rebuild its shm op, ~1 min each time)
    env.update(PATH=f"{env.get('PATH', '')}{os.pathsep}{BIN}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # node address 127.0.0.1, not the machine's IP
               RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled")  # loopback-only test cluster; whatever ~/.ray/auth_token holds
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster on loopback; yields the job API address."""
    temp = tempfile.mkdtemp(prefix="ngray")  # short: Ray's unix socket paths must fit 107 chars
    gcs, dashboard = free_port(), free_port()
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--disable-usage-stats", "--temp-dir", temp],
        stdout=log, stderr=subprocess.STDOUT, env=cluster_env(), start_new_session=True)
    try:
        api = f"http://127.0.0.1:{dashboard}"
        wait_http(f"{api}/api/version", 120)
        yield api
    finally:
        stop_group(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def write_config(tmp_path: Path, data_dir: Path, name: str) -> Path:
    cfg = {
        "model": TINY_TRANSFORMER,
        "data": {"path": str(data_dir), "seq_len": 64},
        "trainer": {"max_steps": 12, "micro_batch_size": 4, "lr": 3e-3, "schedule": "onecycle", "warmup_steps": 3,
                    "eval_every": 0, "eval_batches": 2, "log_every": 4, "seed": 7, "run_dir": str(tmp_path / name)},
        "tracking": {"experiment": "tests"},
        "launcher": {"kind": "ray", "ray": {"num_workers": 2, "cpus_per_worker": 1}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def submit_cmd(config: Path, *overrides: str) -> list[str]:
    return [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--",
            "neurograph", "train", "--config", str(config), *overrides]


def job_env(api: str) -> dict[str, str]:
    return {**cluster_env(), "RAY_API_SERVER_ADDRESS": api}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def submit(api: str, config: Path, *args: str) -> str:
    proc = subprocess.run(submit_cmd(config, *args), env=job_env(api), capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in output, output[-6000:]
    return output


def test_ray_jobs_resume_and_recover_a_killed_worker_like_the_local_launcher(ray_cluster, tmp_path, char_data,
                                                                            local_losses):
    """Job 1 stops after 8 steps (as a job that hit its time slot or was stopped); job 2 is
    submitted with --resume and continues the run directory; once it has published step 20 a
    worker is SIGKILLed and step 20 damaged on disk: Ray Train restarts the workers, which resume
    from the newest checkpoint of the job on the run's storage that verifies, step 16, naming step
    20 as skipped. The 24 steps equal the local launcher's, in one MLflow run."""
    config = write_config(tmp_path, char_data, "ray")
    run_dir = tmp_path / "ray"
    seed_mlflow_store(run_dir)
    submit(ray_cluster, config, *COMMON, "trainer.exit_after=8")
    assert [r["step"] for r in records(run_dir)] == list(range(1, 9))
    run_id = (run_dir / "mlflow_run_id").read_text()
    log = tmp_path / "job.log"
    with running(submit_cmd(config, *COMMON, "launcher.ray.max_failures=2", "--resume"), log,
                 env=job_env(ray_cluster), cwd=REPO) as job:
        # Once step 20 is published, the report of step 12 (each ~2 s) has reached the Ray Train
        # controller (it polls the workers every 2 s), and likely that of 16; steps 21-24 remain
        wait_for(lambda: (run_dir / "checkpoints" / "step_00000020").is_dir(), job, log)
        victim = int((run_dir / "ray_worker_rank1.pid").read_text())
        os.kill(victim, signal.SIGKILL)
        damaged = run_dir / "checkpoints" / "step_00000020"
        shard = damaged / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        shard.write_bytes(shard.read_bytes()[:1000])
        code = job.wait(timeout=600)
    output = log.read_text()
    assert code == 0 and "succeeded" in output, output[-8000:]
    assert "resumed from" in output and "step_00000008" in output, output[-8000:]
    # from the run directory (not Ray Train's copy, which lags it; not again from --resume's step 8)
    assert f"skipping checkpoint {damaged}: {shard.name} does not match its sha256" in output, output[-8000:]
    restarts = re.findall(r"Ray Train restart: resuming from (\S+)", output)
    assert restarts == [str(run_dir / "checkpoints" / "step_00000016")], output[-8000:]
    assert int((run_dir / "ray_worker_rank1.pid").read_text()) != victim
    run = records(run_dir)
    assert [r["step"] for r in run] == list(range(1, STEPS + 1))
    assert max(abs(a - b) for a, b in zip(losses(run), local_losses)) < 1e-6, (losses(run), local_losses)
    assert (run_dir / "mlflow_run_id").read_text() == run_id  # one MLflow run across both jobs
    # every checkpoint was reported to Ray Train (storage_path defaults to <run_dir>/ray), one Ray run per job
    reported = sorted(p.relative_to(run_dir / "ray").parts for p in (run_dir / "ray").glob("*/step_*"))
    assert len({job for job, _ in reported}) == 2
    assert sorted(tag for _, tag in reported)[-1] == f"step_{STEPS:08d}"

    # one MLflow run, every step logged exactly once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run_id
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert runs[0].info.status == "FINISHED"


def test_invalid_config_fails_at_submission(ray_cluster, tmp_path, char_data):
    config = write_config(tmp_path, char_data, "invalid")
    proc = subprocess.run(submit_cmd(config, "deepspeed.zero_stage=4"), env=job_env(ray_cluster),
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert "deepspeed.zero_stage: Input should be 0, 1, 2 or 3 (got 4)" in output, output[-4000:]
    assert "failed" in output
    assert not (tmp_path / "invalid").exists()  # nothing started: no run directory, no worker
