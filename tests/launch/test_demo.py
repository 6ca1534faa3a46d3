"""`neurograph demo` run again on its run root continues the run as `train --resume` does: from the
newest checkpoint that verifies, naming the one it skips (real ranks, a small demo model)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.trainer.runs import losses, read_metrics, seed_mlflow_store

pytestmark = pytest.mark.slow

SMALL = ("data.seq_len=64", "model.max_seq_len=64", "model.d_model=32", "model.n_layer=1", "model.d_ff=64",
         "trainer.micro_batch_size=4", "trainer.grad_accum_steps=1", "trainer.warmup_steps=2", "trainer.log_every=2",
         "trainer.eval_every=0", "trainer.eval_batches=2", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3",
         "trainer.max_steps=6", "trainer.exit_after=4")


def demo(root) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "neurograph.launch.cli", "demo", "--run-root", str(root), *SMALL],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_demo_continues_from_the_newest_checkpoint_that_verifies(tmp_path, char_data):
    shutil.copytree(char_data, tmp_path / "data")  # the demo's data, prepared (seq_len 64)
    run_dir = tmp_path / "run"
    seed_mlflow_store(run_dir)
    demo(tmp_path)  # steps 1-4, checkpoints 2 and 4
    first = read_metrics(run_dir)
    newest = run_dir / "checkpoints" / "step_00000004"
    shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])

    proc = demo(tmp_path)
    output = proc.stdout + proc.stderr
    assert f"skipping checkpoint {newest}: {shard.name} does not match its sha256" in output
    assert "continuing it from step_00000002" in output
    resumed = read_metrics(run_dir)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert max(abs(a - b) for a, b in zip(losses(resumed[2:4]), losses(first[2:4]))) < 1e-6  # 3-4 recomputed alike
    assert "demo finished" in proc.stdout
