"""Every model family trains under DeepSpeed ZeRO-2 and ZeRO-3 on 2 ranks and resumes exactly."""
from __future__ import annotations

import shutil

import pytest

from .runs import STEPS, losses, train

pytestmark = pytest.mark.slow

FAMILIES = {
    # Tiny INL with every training-time option on: shared controller, hierarchical mu,
    # sparse excitation (random masks: exercises RNG restore), convergence loss, FFN branch.
    "inl": {"arch": "inl", "d_model": 64, "n_layer": 2, "n_head": 4, "num_iterations": 3, "feedforward_dim": 64,
            "max_seq_len": 64, "positions": "rope", "shared_controller": True, "hierarchical_equilibrium": True,
            "group_size": 16, "excitation_sparsity": 0.1, "lowrank_embeddings": True, "convergence_weight": 1.0,
            "dropout": 0.1},
    # Tiny INN: per-neuron SSM memory (chunked scan), routing across neurons, identity vectors.
    "inn": {"arch": "inn", "d_model": 32, "n_neurons": 4, "n_layer": 2, "n_head": 2, "d_state": 4,
            "routing": "topk", "topk": 2, "neuron_identity": "embedding", "dropout": 0.1},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_zero2_zero3_and_exact_resume(tmp_path, char_data, family):
    """The ZeRO-3 run checkpoints step 6 on its way (checkpointing must not change its losses:
    ZeRO-2 never does); a copy of the run cut back to that checkpoint resumes to step 12."""
    model = FAMILIES[family]
    ranks = ("trainer.num_processes=2", "trainer.schedule=cosine")
    zero3 = train(tmp_path, char_data, "zero3", *ranks, "deepspeed.zero_stage=3", "trainer.checkpoint_every=6",
                  model=model)
    zero2 = train(tmp_path, char_data, "zero2", *ranks, "deepspeed.zero_stage=2", model=model)
    assert losses(zero3)[-1] < losses(zero3)[0]
    assert max(abs(a - b) for a, b in zip(losses(zero2), losses(zero3))) < 1e-5

    later = ("latest", "step_00000012")
    shutil.copytree(tmp_path / "zero3", tmp_path / "resumed", ignore=lambda folder, names: set(later) & set(names))
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:6]))  # steps 7-12: the resumed run's
    resumed = train(tmp_path, char_data, "resumed", *ranks, "deepspeed.zero_stage=3", model=model, resume=True)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert max(abs(a - b) for a, b in zip(losses(zero3), losses(resumed))) < 1e-6
