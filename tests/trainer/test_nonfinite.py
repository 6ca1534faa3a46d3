"""`trainer.on_nonfinite: skip | rollback` end to end, in one training process: 2 real ranks
(torchrun, DeepSpeed ZeRO-2 on gloo) logging to a real MLflow server. A step diverges in the
middle of the run: a forward hook turns the model's output of that one step into NaN, as a
diverging step would (the weights stay finite, the gradients do not).

- `skip`: the step is logged and counted, ZeRO drops its update (the weights after it are those
  before it), training goes on to the end;
- `rollback`: the run goes back to the checkpoint before the step, replays the steps after it,
  skips the bad step's batches and finishes; the replayed steps, already logged, are not logged
  again.
Either way MLflow holds every step exactly once and `train/nonfinite_steps` counts the step."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurograph.trainer.checkpoint import WEIGHTS, tag_for

from .runs import read_metrics, train_command
from .test_mlflow_server import history_steps, mlflow_server  # noqa: F401 (the module's server)

pytestmark = pytest.mark.slow

STEPS = 12
BAD_STEP = 7

DIVERGING_RUN = '''
import math, sys
from neurograph.launch.config import load_config
from neurograph.trainer.trainer import Trainer

trainer = Trainer(load_config(sys.argv[1], sys.argv[3:]))
bad_step, diverged = int(sys.argv[2]), []

def diverge(module, inputs, output):  # the forward of step `bad_step` (the counter moves after it), once
    if trainer.step == bad_step - 1 and not diverged:
        diverged.append(trainer.step + 1)
        return output * math.nan

trainer.model.register_forward_hook(diverge)
trainer.fit()
'''


def diverging_run(tmp_path: Path, data: Path, uri: str, policy: str, *overrides: str) -> tuple[Path, str]:
    """Train STEPS steps whose step BAD_STEP diverges; returns (run directory, output)."""
    cmd = train_command(tmp_path, data, policy, "trainer.num_processes=2", "deepspeed.zero_stage=2",
                        f"trainer.max_steps={STEPS}", f"trainer.on_nonfinite={policy}", f"tracking.uri={uri}",
                        *overrides, tracking=True)
    config = cmd[cmd.index("--config") + 1]
    (tmp_path / policy).mkdir(exist_ok=True)  # as `neurograph train` makes it
    script = tmp_path / "diverging_run.py"
    script.write_text(DIVERGING_RUN)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), config, str(BAD_STEP), *cmd[cmd.index("--config") + 2:]],
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return tmp_path / policy, output


def logged_once(uri: str, run_dir: Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of the run's MLflow history, asserting no step of any metric is there twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_id = (run_dir / "mlflow_run_id").read_text()
    assert history_steps(uri, run_id) == list(range(1, STEPS + 1))
    histories = {}
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
        histories[key] = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return histories


def test_skip_drops_the_diverged_update_and_goes_on(mlflow_server, tmp_path, char_data):  # noqa: F811
    run_dir, output = diverging_run(tmp_path, char_data, mlflow_server.uri, "skip", "trainer.checkpoint_every=1",
                                    f"trainer.keep_checkpoints={STEPS}")
    assert f"non-finite training step {BAD_STEP}" in output and "update skipped (1 non-finite steps so far)" in output
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert math.isnan(records[BAD_STEP - 1]["train/loss"])
    assert all(math.isfinite(r["train/loss"]) for r in records if r["step"] != BAD_STEP)
    assert [r.get("train/nonfinite_steps", 0) for r in records] == [0] * (BAD_STEP - 1) + [1] * (STEPS - BAD_STEP + 1)
    from safetensors.torch import load_file

    before, after = (load_file(run_dir / "checkpoints" / tag_for(s) / WEIGHTS) for s in (BAD_STEP - 1, BAD_STEP))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the update was dropped
    last = load_file(run_dir / "checkpoints" / tag_for(STEPS) / WEIGHTS)
    assert any(not torch.equal(after[k], last[k]) for k in after)  # and training went on

    metrics = logged_once(mlflow_server.uri, run_dir)
    assert math.isnan(metrics["train/loss"][BAD_STEP])
    assert metrics["train/nonfinite_steps"] == {s: 1.0 for s in range(BAD_STEP, STEPS + 1)}


def test_rollback_replays_without_logging_a_step_twice(mlflow_server, tmp_path, char_data):  # noqa: F811
    run_dir, output = diverging_run(tmp_path, char_data, mlflow_server.uri, "rollback", "trainer.checkpoint_every=4")
    assert f"non-finite training step {BAD_STEP}" in output and "rolled back to step_00000004" in output
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # the replayed steps once, cut back
    assert all(math.isfinite(r["train/loss"]) for r in records)
    assert [r.get("train/nonfinite_steps", 0) for r in records] == [0] * 4 + [1] * (STEPS - 4)

    metrics = logged_once(mlflow_server.uri, run_dir)
    # steps 5-6 as first logged (the replay computed the same values), the bad step's replacement from then on
    assert metrics["train/loss"] == {r["step"]: pytest.approx(r["train/loss"], rel=1e-6) for r in records}
    assert metrics["train/nonfinite_steps"] == {s: 1.0 for s in range(BAD_STEP, STEPS + 1)}
