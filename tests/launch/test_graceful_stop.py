"""SIGTERM/SIGINT to `neurograph train` (2 ranks): the ranks finish their step, checkpoint it,
mark the MLflow run KILLED and exit 143/130; `--resume` continues with the losses of an
uninterrupted run; a second signal ends everything at once; no process of the run is left."""
from __future__ import annotations

import signal
import time

import psutil
import pytest

from neurograph.trainer.checkpoint import CheckpointManager, tag_for

from tests.trainer.runs import losses, read_metrics, running, train, train_command, wait_for

pytestmark = pytest.mark.slow

STEPS = 200  # far more than the runs make: the schedule is that of a long run
UNTIL = 14   # steps compared with the uninterrupted run
COMMON = ("trainer.num_processes=2", "deepspeed.zero_stage=2", f"trainer.max_steps={STEPS}", "trainer.log_every=1",
          "trainer.preemption_grace_s=60")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, char_data) -> list[float]:
    """The first UNTIL losses of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    return losses(train(tmp, char_data, "full", *COMMON, f"trainer.exit_after={UNTIL}"))


def stop_run(tmp_path, char_data, name: str, signals: list[int], *overrides: str, after_step: int = 3):
    """Start a run, send `signals` to the launcher once `after_step` is logged; returns (exit code,
    seconds from the first signal to the exit, every process the run had)."""
    run_dir = tmp_path / name
    log_path = tmp_path / f"{name}.log"
    seen: dict[int, float] = {}  # pid -> create time

    def progressed() -> bool:
        for p in psutil.Process(proc.pid).children(recursive=True):
            seen.setdefault(p.pid, p.create_time())
        metrics = run_dir / "metrics.jsonl"
        return metrics.exists() and len(metrics.read_text().splitlines()) >= after_step

    with running(train_command(tmp_path, char_data, name, *COMMON, *overrides, tracking=True), log_path) as proc:
        wait_for(progressed, proc, log_path)
        started = time.monotonic()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.5)  # two signals at once would be delivered as one
            proc.send_signal(sig)
        code = proc.wait(timeout=90)
        return code, time.monotonic() - started, seen, log_path.read_text()


def assert_nothing_left(seen: dict[int, float]) -> None:
    assert len(seen) >= 3, seen  # torchrun and two ranks at least
    alive = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.cmdline())
        except psutil.NoSuchProcess:
            pass
    assert not alive, alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_the_last_step_and_resume_matches(tmp_path, char_data, reference, sig):
    code, seconds, seen, log = stop_run(tmp_path, char_data, "run", [sig])
    assert code == 128 + sig, log[-4000:]
    assert seconds < 60, seconds
    assert_nothing_left(seen)
    records = read_metrics(tmp_path / "run")
    last = records[-1]["step"]
    assert [r["step"] for r in records] == list(range(1, last + 1))  # every step up to the checkpoint
    assert 3 <= last < UNTIL, last
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest_tag() == tag_for(last)
    assert f"resume with: neurograph train --config {tmp_path / 'run' / 'config.yaml'} --resume" in log
    assert "Traceback" not in log, log[-4000:]

    from mlflow.tracking import MlflowClient

    run_id = (tmp_path / "run" / "mlflow_run_id").read_text()
    run = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["neurograph.stopped_at_step"] == str(last)

    if sig == signal.SIGTERM:  # resuming is the same whatever the signal
        resumed = train(tmp_path, char_data, "run", *COMMON, f"trainer.exit_after={UNTIL - last}", resume=True,
                        tracking=True)
        assert max(abs(a - b) for a, b in zip(losses(resumed), reference)) < 1e-6, (losses(resumed), reference)
        assert len(resumed) == UNTIL


def test_second_sigterm_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, char_data):
    code, seconds, seen, log = stop_run(tmp_path, char_data, "run", [signal.SIGTERM, signal.SIGTERM],
                                        "trainer.checkpoint_every=2", after_step=5)
    assert code == 143, log[-4000:]
    assert seconds < 10, seconds
    assert_nothing_left(seen)
    from neurograph.launch.inference import load_trained_model

    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    assert manager.latest_tag() in manager.published() and manager.published()[0] >= tag_for(4)
    load_trained_model(tmp_path / "run")  # the last published checkpoint (a regular or the stop one) still loads
