"""Real DeepSpeed engines on gloo: data-parallel equivalence and exact resume.

Each run is `neurograph train` in a subprocess (torchrun, 1 or 2 ranks); losses are read
from the run's metrics file."""
from __future__ import annotations

import pytest

from .runs import STEPS, losses, train

pytestmark = pytest.mark.slow

def test_two_ranks_zero2_and_zero3_match_one_rank(tmp_path, char_data):
    """Same global batch (8 sequences): 1 rank x 8 == 2 ranks x 4 under ZeRO-2 and ZeRO-3."""
    single = losses(train(tmp_path, char_data, "single", "trainer.num_processes=1", "trainer.micro_batch_size=8",
                          "deepspeed.zero_stage=0"))
    zero2 = losses(train(tmp_path, char_data, "zero2", "trainer.num_processes=2", "deepspeed.zero_stage=2",
                         "data.num_workers=2"))
    zero3 = losses(train(tmp_path, char_data, "zero3", "trainer.num_processes=2", "deepspeed.zero_stage=3"))
    assert len(single) == len(zero2) == len(zero3) == STEPS
    assert single[-1] < single[0] - 0.5  # it learns
    assert max(abs(a - b) for a, b in zip(single, zero2)) < 1e-5, (single, zero2)
    assert max(abs(a - b) for a, b in zip(single, zero3)) < 1e-5, (single, zero3)

    # The sharded checkpoints consolidate to the same full weights whatever the ZeRO stage.
    from neurograph.launch.inference import load_trained_model

    weights = [load_trained_model(tmp_path / name)[0].state_dict() for name in ("single", "zero2", "zero3")]
    for other in weights[1:]:
        assert max((weights[0][k] - other[k]).abs().max().item() for k in weights[0]) < 1e-5


def test_exact_resume_two_ranks(tmp_path, char_data):
    """Stop after step 5 (checkpoint), resume: steps 6..12 equal an uninterrupted run within 1e-6,
    and the resumed run continues the same MLflow run."""
    common = ("trainer.num_processes=2", "deepspeed.zero_stage=2", "data.num_workers=2", "model.dropout=0.1",
              "trainer.schedule=cosine")
    full = train(tmp_path, char_data, "full", *common)
    first = train(tmp_path, char_data, "resumed", *common, "trainer.exit_after=5", "trainer.checkpoint_every=4",
                  tracking=True)
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5]
    run_id = (tmp_path / "resumed" / "mlflow_run_id").read_text()
    second = train(tmp_path, char_data, "resumed", *common, resume=True, tracking=True)
    assert [r["step"] for r in second] == list(range(1, STEPS + 1))
    assert max(abs(a - b) for a, b in zip(losses(full), losses(second))) < 1e-6, (losses(full), losses(second))
    assert (tmp_path / "resumed" / "mlflow_run_id").read_text() == run_id

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'resumed' / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # one run, no step twice
    run = client.get_run(run_id)
    assert run.data.params["trainer.schedule"] == "cosine" and run.data.params["deepspeed.zero_stage"] == "2"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]
