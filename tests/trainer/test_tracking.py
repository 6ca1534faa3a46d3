"""MLflowTracker against a real local MLflow store (sqlite + file artifacts): buffering while
the server fails, the spill file that outlives a killed process, one run per launch, no step
logged twice, checkpoints as artifacts and their download."""
from __future__ import annotations

import logging

import pytest
import torch
from mlflow.tracking import MlflowClient

from neurograph.trainer.checkpoint import CheckpointManager, safe_load, write_manifest
from neurograph.trainer.tracking import LATEST_CHECKPOINT_TAG, PENDING_FILE, MLflowTracker, default_tracking_uri, download_checkpoint


class Outage:
    """Makes a tracker's client fail like an unreachable server while `down`."""

    def __init__(self, tracker: MLflowTracker, monkeypatch):
        self.down = False
        for name in ("log_batch", "update_run", "get_metric_history", "log_artifacts", "set_tag"):
            real = getattr(tracker.client, name)
            monkeypatch.setattr(tracker.client, name, self._wrap(real))

    def _wrap(self, real):
        def call(*args, **kwargs):
            if self.down:
                raise ConnectionError("server down")
            return real(*args, **kwargs)
        return call


STORE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); a run directory per test."""
    STORE["uri"] = default_tracking_uri(tmp_path_factory.mktemp("mlflow_store"))
    yield
    STORE.clear()


def new_tracker(run_dir, **kw) -> MLflowTracker:
    """A tracker that tries to send at every step (flush_every=0), so the outage tests see each attempt."""
    return MLflowTracker(STORE["uri"], "tests", run_dir, retry_interval=0.01, **{"flush_every": 0.0, **kw})


def steps(run_dir, run_id, key="train/loss") -> list[int]:
    history = MlflowClient(STORE["uri"]).get_metric_history(run_id, key)
    return sorted(m.step for m in history)


def test_outage_buffers_then_delivers_everything_once(tmp_path, monkeypatch, caplog):
    tracker = new_tracker(tmp_path)
    run_id = tracker.start(None, "r", {"a": 1})
    outage = Outage(tracker, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="neurograph.tracking"):
        tracker.log_metrics({"train/loss": 1.0}, 1)
        outage.down = True
        for step in range(2, 6):
            tracker.log_metrics({"train/loss": float(step)}, step)
        assert (tmp_path / PENDING_FILE).is_file() and len(tracker._pending) == 4
        outage.down = False
        for step in range(6, 8):
            tracker.log_metrics({"train/loss": float(step)}, step)
        assert tracker.finish(wait=5) == 0
    assert steps(tmp_path, run_id) == list(range(1, 8))
    assert not (tmp_path / PENDING_FILE).exists()
    assert "unreachable" in caplog.text and "reachable again" in caplog.text


def test_points_are_sent_in_batches_off_the_step_path(tmp_path):
    """With flush_every > 0 a step only appends to the buffer: the points go out together once the
    interval has passed (or at a checkpoint's flush, or at finish)."""
    tracker = new_tracker(tmp_path, flush_every=3600.0)
    run_id = tracker.start(None, "r", {})
    tracker.log_metrics({"train/loss": 1.0}, 1)  # the first call sends (nothing sent yet)
    for step in range(2, 5):
        tracker.log_metrics({"train/loss": float(step)}, step)
    assert steps(tmp_path, run_id) == [1] and len(tracker._pending) == 3
    assert tracker.flush()
    assert steps(tmp_path, run_id) == [1, 2, 3, 4] and not tracker._pending
    tracker.log_metrics({"train/loss": 5.0}, 5)
    assert tracker.finish(wait=5) == 0 and steps(tmp_path, run_id) == [1, 2, 3, 4, 5]


def test_dropped_points_are_counted(tmp_path, monkeypatch, caplog):
    tracker = new_tracker(tmp_path)
    tracker.start(None, "r", {})
    Outage(tracker, monkeypatch).down = True
    for step in range(1, 4):
        tracker.log_metrics({"train/loss": 1.0, "train/lr": 0.1}, step)
    with caplog.at_level(logging.WARNING, logger="neurograph.tracking"):
        assert tracker.finish(wait=0.05) == 6
    assert "6 metric points dropped" in caplog.text


def test_points_buffered_by_a_killed_process_are_sent_by_its_successor(tmp_path, monkeypatch):
    first = new_tracker(tmp_path)
    run_id = first.start(None, "r", {})
    outage = Outage(first, monkeypatch)
    first.log_metrics({"train/loss": 1.0}, 1)
    first.log_metrics({"train/loss": 2.0}, 2)
    outage.down = True
    for step in range(3, 7):
        first.log_metrics({"train/loss": float(step)}, step)
    # killed here (no finish); a restarted process resumes from the checkpoint of step 5
    second = new_tracker(tmp_path)
    assert second.start(run_id, "r", {}, resume_step=5) == run_id
    for step in range(6, 9):  # steps after the checkpoint are recomputed
        second.log_metrics({"train/loss": float(step)}, step)
    assert second.finish(wait=5) == 0
    assert steps(tmp_path, run_id) == list(range(1, 9))


def test_resume_skips_logged_steps_even_when_the_server_answers_late(tmp_path, monkeypatch):
    first = new_tracker(tmp_path)
    run_id = first.start(None, "r", {})
    for step in range(1, 6):
        first.log_metrics({"train/loss": float(step)}, step)
    second = new_tracker(tmp_path)
    outage = Outage(second, monkeypatch)
    outage.down = True
    second.start(run_id, "r", {}, resume_step=3)  # server down: which steps it holds is unknown
    for step in range(4, 8):
        second.log_metrics({"train/loss": float(step)}, step)
    outage.down = False
    assert second.finish(wait=5) == 0
    assert steps(tmp_path, run_id) == list(range(1, 8))


def test_restarted_launch_continues_its_run(tmp_path):
    first = new_tracker(tmp_path)
    run_id = first.start(None, "r", {"p": 1}, launch_id="job-1")
    first.log_metrics({"train/loss": 1.0}, 1)
    # restarted before any checkpoint: no run id, only the launch id
    assert new_tracker(tmp_path).start(None, "r", {"p": 1}, launch_id="job-1") == run_id
    assert new_tracker(tmp_path).start(None, "r", {"p": 1}, launch_id="job-2") != run_id


def test_system_metrics_are_sampled(tmp_path):
    tracker = new_tracker(tmp_path, system_metrics_every=0.001)
    run_id = tracker.start(None, "r", {})
    tracker.log_metrics({"train/loss": 1.0}, 1)
    tracker.finish(wait=1)
    assert steps(tmp_path, run_id, "system/cpu_percent") == [1]


def test_checkpoint_artifacts_round_trip(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = new_tracker(run_dir)
    run_id = tracker.start(None, "r", {})
    for step in (4, 8):
        ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
        (ckpt / "nested").mkdir(parents=True)
        torch.save({"w": torch.full((2,), step)}, ckpt / "nested" / "shard.pt")
        torch.save({"rng": torch.zeros(1)}, ckpt / "rng_rank00000.pt")
        write_manifest(ckpt, step=step)
        assert tracker.log_checkpoint(ckpt, ckpt.name)
    # a failed upload does not move the latest tag
    outage = Outage(tracker, monkeypatch)
    outage.down = True
    assert not tracker.log_checkpoint(run_dir / "checkpoints" / "step_00000008", "step_00000012")
    uri = STORE["uri"]
    assert MlflowClient(uri).get_run(run_id).data.tags[LATEST_CHECKPOINT_TAG] == "step_00000008"

    elsewhere = tmp_path / "other_machine" / "checkpoints"
    assert download_checkpoint(uri, run_id, elsewhere) == "step_00000008"
    manager = CheckpointManager(elsewhere)
    assert manager.latest_tag() == "step_00000008"
    assert safe_load(elsewhere / "step_00000008" / "nested" / "shard.pt")["w"].tolist() == [8, 8]
    assert not any((elsewhere / ".staging").iterdir())


def test_download_without_logged_checkpoint_names_the_setting(tmp_path):
    tracker = new_tracker(tmp_path)
    run_id = tracker.start(None, "r", {})
    with pytest.raises(FileNotFoundError, match="checkpoint_artifacts_every"):
        download_checkpoint(STORE["uri"], run_id, tmp_path / "ckpts")
