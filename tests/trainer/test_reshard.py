"""Resuming on another world size and ZeRO stage (`--resume --reshard`), end to end: real
`neurograph train` ranks on gloo. A 2-rank ZeRO-2 run's checkpoint at step 6 continues on 1 rank
with ZeRO-3 and on 3 ranks with ZeRO-1, with the same global batch (6 sequences): steps 7-12 equal
an uninterrupted 2-rank run within 1e-4 (relative) and consume the same samples; the converted
copy verifies and sits beside the original, which is unchanged.

One uninterrupted run (checkpoints at 6 and 12) is shared by the module: its step-6 checkpoint is
the stopped run each test continues."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from neurograph.trainer.checkpoint import (UNIVERSAL, CheckpointManager, check_checkpoint, read_manifest, safe_load,
                                           sha256)
from neurograph.trainer.reshard import FORMAT

from .runs import STEPS, losses, read_metrics, train, train_command

pytestmark = pytest.mark.slow

STOP = 6
COMMON = (f"trainer.checkpoint_every={STOP}",)
SHAPES = {  # world size -> its overrides; every shape reads 6 sequences per step
    2: ("trainer.num_processes=2", "trainer.micro_batch_size=3", "deepspeed.zero_stage=2"),
    1: ("trainer.num_processes=1", "trainer.micro_batch_size=6", "deepspeed.zero_stage=3"),
    3: ("trainer.num_processes=3", "trainer.micro_batch_size=2", "deepspeed.zero_stage=1"),
}
TAG = f"step_{STOP:08d}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, char_data) -> tuple[Path, list[dict]]:
    """(run directory, metrics) of 12 uninterrupted steps on 2 ranks with ZeRO-2."""
    root = tmp_path_factory.mktemp("uninterrupted")
    return root / "run", train(root, char_data, "run", *SHAPES[2], *COMMON)


def stopped_at_six(uninterrupted, tmp_path: Path) -> Path:
    """A copy of the run as it was when stopped after step 6 (its checkpoint at 12 removed)."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    (run_dir / "checkpoints" / "latest").write_text(TAG)
    return run_dir


def data_position(checkpoint: Path) -> int:
    """Samples of the training stream consumed, as the checkpoint's client state records it."""
    states = sorted(checkpoint.glob("*mp_rank_00_model_states.pt"))[0]  # ZeRO-3: zero_pp_rank_0_mp_rank_00_...
    return safe_load(states)["data"]["consumed"]


@pytest.mark.parametrize("world", [1, 3], ids=["1-rank-zero3", "3-ranks-zero1"])
def test_resume_on_another_world_size_and_zero_stage_matches_the_uninterrupted_run(uninterrupted, tmp_path, char_data,
                                                                                    world):
    run_dir = stopped_at_six(uninterrupted, tmp_path)
    original = run_dir / "checkpoints" / TAG
    digests = read_manifest(original)["files"]

    if world == 1:  # without --reshard: refused, naming both shapes, nothing converted
        proc = subprocess.run(train_command(tmp_path, char_data, "run", *SHAPES[world], *COMMON, resume=True),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert ("written by 2 processes with ZeRO stage 2, this run has 1 with stage 3; pass --reshard"
                in proc.stderr.strip().splitlines()[-1])
        assert not (run_dir / "checkpoints" / UNIVERSAL).exists()

    resumed = train(tmp_path, char_data, "run", "--reshard", *SHAPES[world], *COMMON, resume=True)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    expected = losses(uninterrupted[1])
    for step in range(STOP + 1, STEPS + 1):
        got, want = resumed[step - 1]["train/loss"], expected[step - 1]
        assert abs(got - want) <= 1e-4 * abs(want), (step, got, want)

    # the same samples: the stream positions after steps 6 and 12 are those of the uninterrupted run
    universal = run_dir / "checkpoints" / UNIVERSAL / TAG
    final = f"step_{STEPS:08d}"
    assert data_position(universal) == data_position(original) == STOP * 6
    assert data_position(run_dir / "checkpoints" / final) == data_position(uninterrupted[0] / "checkpoints" / final)

    # the converted copy verifies, says what it is; the original is kept as it was
    assert check_checkpoint(universal) is None
    manifest = read_manifest(universal)
    assert manifest["format"] == FORMAT and manifest["converted_from"] == TAG and manifest["step"] == STOP
    assert check_checkpoint(original) is None and read_manifest(original)["files"] == digests
    assert all(sha256(original / name) == digest for name, digest in digests.items())
    assert CheckpointManager(run_dir / "checkpoints").published() == [TAG, final]
    assert read_manifest(run_dir / "checkpoints" / final)["world_size"] == world
