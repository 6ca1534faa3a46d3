"""Faults of issue 11, end to end: real `neurograph train` ranks (DeepSpeed ZeRO-2 on gloo) and a
real MLflow server. One trained run (2 processes, checkpoints at steps 4, 8 and 12) is shared
by the module; each test damages its own copy.

- a NaN in a checkpoint's weights stops the resumed run at its first step, writing nothing and
  keeping every checkpoint; `trainer.on_nonfinite=rollback` finishes the run from the last
  checkpoint with finite weights;
- a truncated newest checkpoint (and a deleted `latest`) falls back to the previous one;
- a changed `model.n_head`, or a different number of processes, is refused before any rank
  starts, and config.yaml stays as it was;
- a crafted pickle served by MLflow as a checkpoint is never executed;
- a run started while the tracking server is down trains to the end; its metrics arrive
  when the server starts.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurograph.trainer.checkpoint import (MANIFEST, WEIGHTS, CheckpointManager, check_checkpoint, read_manifest, safe_load,
                                write_manifest)

from .runs import read_metrics, running, train, train_command, wait_for
from .test_mlflow_server import MLflowServer, history_steps

pytestmark = pytest.mark.slow

COMMON = ("trainer.num_processes=2", "deepspeed.zero_stage=2", "trainer.checkpoint_every=4",
          "trainer.keep_checkpoints=3", "trainer.max_steps=16", "trainer.exit_after=12")
TAGS = ["step_00000004", "step_00000008", "step_00000012"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, char_data) -> tuple[Path, list[dict]]:
    """(directory holding the run `run`, its metrics): 12 of 16 steps, checkpoints 4, 8, 12."""
    root = tmp_path_factory.mktemp("trained")
    return root, train(root, char_data, "run", *COMMON, tracking=True)


def copy_run(trained, tmp_path: Path) -> Path:
    shutil.copytree(trained[0] / "run", tmp_path / "run")
    return tmp_path / "run"


def cli(tmp_path: Path, data: Path, *args: str, resume: bool = True) -> subprocess.CompletedProcess:
    cmd = train_command(tmp_path, data, "run", *COMMON, *args, resume=resume, tracking=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@torch.no_grad()
def inject_nan(checkpoint: Path) -> None:
    """NaN into the master weights (ZeRO partition of rank 0) and the module weights, resealed:
    a checkpoint that verifies but holds non-finite weights."""
    optim = checkpoint / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = safe_load(optim)
    state["optimizer_state_dict"]["single_partition_of_fp32_groups"][0][0] = math.nan
    torch.save(state, optim)
    model = checkpoint / "mp_rank_00_model_states.pt"
    state = safe_load(model)
    next(iter(state["module"].values())).view(-1)[0] = math.nan
    torch.save(state, model)
    reseal(checkpoint)


def reseal(checkpoint: Path) -> None:
    """Rewrite the manifest for the files as they are now."""
    write_manifest(checkpoint, **{k: v for k, v in read_manifest(checkpoint).items() if k != "files"})


def test_nonfinite_weights_stop_the_run_and_rollback_finishes_it(trained, tmp_path, char_data):
    run_dir = copy_run(trained, tmp_path)
    inject_nan(run_dir / "checkpoints" / TAGS[-1])
    assert check_checkpoint(run_dir / "checkpoints" / TAGS[-1]) is None

    proc = cli(tmp_path, char_data)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "non-finite training step 13" in out and f"last good checkpoint: {run_dir / 'checkpoints' / TAGS[-1]}" in out
    checkpoints = CheckpointManager(run_dir / "checkpoints")
    assert checkpoints.published() == TAGS and checkpoints.latest_tag() == TAGS[-1]  # nothing written after it
    assert all(check_checkpoint(checkpoints.root / t) is None for t in TAGS)

    proc = cli(tmp_path, char_data, "trainer.on_nonfinite=rollback")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f"{TAGS[-1]} holds non-finite weights" in out and "rolled back to step_00000008" in out, out[-6000:]
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 17))
    assert records[:8] == trained[1][:8]
    assert all(math.isfinite(r["train/loss"]) and r["train/nonfinite_steps"] == 1 for r in records[8:])
    assert "step_00000016" in checkpoints.published()
    assert TAGS[-1] in checkpoints.published()  # pinned: the newest checkpoint before the non-finite step
    from safetensors.torch import load_file

    assert all(torch.isfinite(v).all() for v in load_file(checkpoints.root / "step_00000016" / WEIGHTS).values())


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, char_data):
    run_dir = copy_run(trained, tmp_path)
    shard = run_dir / "checkpoints" / TAGS[-1] / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    (run_dir / "checkpoints" / "latest").unlink()

    proc = cli(tmp_path, char_data, "trainer.exit_after=4")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "rebuilt from the directory" in out
    assert f"skipping checkpoint {run_dir / 'checkpoints' / TAGS[-1]}: {shard.name} does not match its sha256" in out
    resumed = read_metrics(run_dir)
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert max(abs(r["train/loss"] - e["train/loss"]) for r, e in zip(resumed[8:], trained[1][8:])) < 1e-6


def test_resume_refuses_a_changed_model_or_world_size(trained, tmp_path, char_data):
    run_dir = copy_run(trained, tmp_path)
    saved = (run_dir / "config.yaml").read_bytes()
    # `--resume key=value`: the override is applied, not taken as a tag
    proc = cli(tmp_path, char_data, "--resume", "model.n_head=2", resume=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --resume: the config differs from checkpoint step_00000012's in model.n_head; undo the change, "
        "or pass --allow-config-change if it is deliberate")
    proc = cli(tmp_path, char_data, "trainer.num_processes=1", "--resume=latest", resume=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "written by 2 processes with ZeRO stage 2, this run has 1 with stage 2" in proc.stderr
    assert "resume with trainer.num_processes=2 deepspeed.zero_stage=2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run_dir / "config.yaml").read_bytes() == saved
    assert CheckpointManager(run_dir / "checkpoints").published() == TAGS


def test_generate_user_errors_are_one_line(trained):
    def generate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "neurograph.launch.cli", "generate", "--prompt", "ab", *args],
                              capture_output=True, text=True, timeout=300)

    run = str(trained[0] / "run")
    for args, message in ((("--run", str(trained[0] / "nowhere")), "not a training run directory"),
                          (("--run", run, "--checkpoint", "99"), "checkpoint step_00000099 not found"),
                          (("--run", run, "--top-p", "1.5"), "--top-p out of range")):
        proc = generate(*args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('executed')",)


def test_crafted_pickle_from_mlflow_is_never_executed(trained, tmp_path, char_data):
    from mlflow.tracking import MlflowClient

    from neurograph.trainer.tracking import LATEST_CHECKPOINT_TAG

    marker = tmp_path / "PWNED"
    crafted = tmp_path / "crafted" / TAGS[-1]
    shutil.copytree(trained[0] / "run" / "checkpoints" / TAGS[-1], crafted)
    evil = crafted / "mp_rank_00_model_states.pt"
    torch.save({"module": Payload(marker)}, evil)
    reseal(crafted)  # a checksum from the same server proves nothing

    server = MLflowServer(tmp_path)
    server.start()
    try:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("attack")).info.run_id
        client.log_artifacts(run_id, str(crafted), f"checkpoints/{TAGS[-1]}")
        client.set_tag(run_id, LATEST_CHECKPOINT_TAG, TAGS[-1])
        proc = cli(tmp_path, char_data, f"tracking.uri={server.uri}", "--resume-from", f"mlflow:{run_id}", resume=False)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"{evil.name} cannot be loaded safely" in proc.stderr.strip().splitlines()[-1]
        assert not marker.exists()
        assert not (tmp_path / "run" / "checkpoints" / TAGS[-1]).exists()  # never published

        client.set_tag(run_id, LATEST_CHECKPOINT_TAG, "../../outside")  # a tag from the server is no path
        proc = cli(tmp_path, char_data, f"tracking.uri={server.uri}", "--resume-from", f"mlflow:{run_id}", resume=False)
        assert proc.returncode == 2 and "which is not a tag (step_N)" in proc.stderr, proc.stderr[-3000:]
    finally:
        server.stop()
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"], timeout=120)
    assert marker.read_text() == "executed"  # the payload is real: an unrestricted unpickler runs it


def test_run_started_with_the_tracking_server_down_finishes_and_delivers(tmp_path, char_data):
    server = MLflowServer(tmp_path)  # not started yet
    steps = 8
    cmd = train_command(tmp_path, char_data, "run", "trainer.num_processes=1", f"trainer.max_steps={steps}",
                        f"tracking.uri={server.uri}", "tracking.retry_interval=1", "tracking.finish_timeout=300", tracking=True)
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    try:
        with running(cmd, log) as proc:
            wait_for(lambda: (run_dir / "metrics.jsonl").is_file()
                     and (run_dir / "metrics.jsonl").read_text().count("\n") >= steps, proc, log, poll=0.2)
            assert not (run_dir / "mlflow_run_id").exists()  # no run on the server yet
            server.start()
            code = proc.wait(timeout=300)
        output = log.read_text()
        assert code == 0, output[-6000:]
        assert "could not create the MLflow run" in output and "dropped" not in output
        run_id = (run_dir / "mlflow_run_id").read_text()
        assert history_steps(server.uri, run_id) == list(range(1, steps + 1))
        from mlflow.tracking import MlflowClient

        run = MlflowClient(server.uri).get_run(run_id)
        assert run.data.params["model.n_head"] == "4" and run.info.status == "FINISHED"
    finally:
        server.stop()


def test_manifest_rejects_missing_extra_modified_and_unsafe_files(tmp_path):
    ckpt = tmp_path / "step_00000001"
    ckpt.mkdir()
    torch.save({"w": torch.ones(3)}, ckpt / "a.pt")
    (ckpt / "b.bin").write_bytes(b"x" * 10)
    assert check_checkpoint(ckpt).startswith(f"no {MANIFEST}")
    write_manifest(ckpt, step=1)
    assert check_checkpoint(ckpt) is None
    (ckpt / "c.bin").write_bytes(b"")
    assert check_checkpoint(ckpt) == f"c.bin is not listed in {MANIFEST}"
    (ckpt / "c.bin").unlink()
    (ckpt / "b.bin").write_bytes(b"y" * 10)
    assert "b.bin does not match its sha256" in check_checkpoint(ckpt)
    (ckpt / "b.bin").unlink()
    assert check_checkpoint(ckpt) == "b.bin is missing"
    torch.save({"w": Payload(tmp_path / "marker")}, ckpt / "a.pt")
    write_manifest(ckpt, step=1)
    assert check_checkpoint(ckpt).startswith("a.pt cannot be loaded safely")
    assert not (tmp_path / "marker").exists()


def test_latest_pointer_rebuilt_and_pinned_checkpoint_kept(tmp_path):
    manager = CheckpointManager(tmp_path, keep=1)
    for step in (1, 2, 3):
        (tmp_path / f"step_0000000{step}").mkdir()
    assert manager.latest_tag() == "step_00000003"
    assert (tmp_path / "latest").read_text() == "step_00000003"
    manager.pin("step_00000001")
    manager._prune(keep_tag="step_00000003")
    assert manager.published() == ["step_00000001", "step_00000003"]


def test_restart_takes_the_newest_verified_checkpoint_of_its_own_launch(tmp_path):
    """What a restarted Ray worker group resumes from (launch/ray_launcher.py `_start_from`)."""
    manager = CheckpointManager(tmp_path)
    # job 2 resumed from step 4 and wrote 8 and 12; 16 is job 1's, left behind
    for step, launch in ((4, "job1"), (8, "job2"), (12, "job2"), (16, "job1")):
        checkpoint = tmp_path / f"step_{step:08d}"
        checkpoint.mkdir()
        (checkpoint / "weights.bin").write_bytes(b"x" * 10)
        write_manifest(checkpoint, step=step, launch_id=launch)
    (tmp_path / "step_00000012" / "weights.bin").write_bytes(b"y" * 10)  # damaged
    assert manager.resolve_verified("latest", launch_id="job2") == "step_00000008"
    assert manager.resolve_verified("latest") == "step_00000016"
    with pytest.raises(FileNotFoundError):  # none of its own yet: the launch's own start
        manager.resolve_verified("latest", launch_id="job3")
