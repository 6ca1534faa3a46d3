"""Activation checkpointing and torch.compile: the eager losses and gradients, for every family;
train/mfu only where a peak rate is known."""
from __future__ import annotations

import pytest
import torch

from neurograph.model import build_model
from neurograph.trainer.acceleration import block_list, checkpoint_blocks, checkpointing_mode, compile_blocks
from neurograph.trainer.config import TrainerConfig

from .runs import losses, train

V, B, T = 48, 2, 16
ATTENTION = {"d_model": 32, "n_layer": 3, "n_head": 4, "max_seq_len": T, "dropout": 0.1}
FAMILIES = {
    "transformer": {"arch": "transformer", "d_ff": 64, **ATTENTION},
    "inl": {"arch": "inl", "num_iterations": 2, "feedforward_dim": 64, "controller_rank": 8,
            "excitation_sparsity": 0.1, **ATTENTION},
    "hf_inl": {"arch": "hf_inl", "num_iterations": 2, "controller_rank": 8, **ATTENTION},
    "inn": {"arch": "inn", "d_model": 16, "n_neurons": 4, "n_layer": 3, "n_head": 2, "dropout": 0.1,
            "scan_impl": "chunked"},
    "mamba_stack": {"arch": "mamba_stack", "d_model": 16, "n_layer": 3, "dropout": 0.1, "scan_impl": "chunked"},
    "lstm": {"arch": "lstm", "d_model": 16, "n_layer": 2, "dropout": 0.1},
}


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(1)  # same dropout masks in both runs
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def built(family: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"vocab_size": V, **FAMILIES[family], **overrides}).train()


def forward_counts(model: torch.nn.Module) -> list[int]:
    """Per block: how often its first parameterised submodule runs (recomputation runs it again)."""
    counts = []
    for block in block_list(model):
        inner = next((m for m in block.modules() if m is not block and any(True for _ in m.parameters(False))), block)
        counts.append(0)
        inner.register_forward_hook(lambda *_, i=len(counts) - 1: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("mode", ["layers", "every_k"])
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpointing_gives_the_eager_loss_and_gradients(family, mode):
    ids = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    loss, grads = loss_and_grads(built(family), ids)
    model = built(family)
    names = [n for n, _ in model.named_parameters()]
    checkpointed = checkpoint_blocks(model, mode, every=2)
    counts = forward_counts(model)
    loss_ckpt, grads_ckpt = loss_and_grads(model, ids)
    assert [n for n, _ in model.named_parameters()] == names  # state dict keys unchanged
    assert loss_ckpt == loss
    for g, g_ckpt in zip(grads, grads_ckpt):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-5, atol=1e-7)
    n = len(counts)
    expected = [2 if mode == "layers" or i % 2 == 0 else 1 for i in range(n)]
    if family != "lstm":  # nn.LSTM has no submodule to hook (its one block is checkpointed)
        assert counts == expected
    assert checkpointed == sum(c == 2 for c in expected)


def test_selective_checkpointing_recomputes_only_the_integrator_branches():
    """INL under `selective`: the eager loss and gradients; each block's integrator branch runs its forward twice
    (the shared controller, called once per iteration, twice as often), its attention once; what the forward keeps
    for backward shrinks to a fraction (the branches' inputs only)."""
    ids = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    loss, grads = loss_and_grads(built("inl"), ids)
    model = built("inl")
    modules, share = model.selective_checkpointing()
    assert modules == [blk.integrator for blk in model.blocks] and 0 < share < 1
    assert checkpoint_blocks(model, "selective") == pytest.approx(len(modules) * share)
    calls = {"controller": 0, "attn": 0}
    model.controller.register_forward_hook(lambda *_: calls.__setitem__("controller", calls["controller"] + 1))
    for blk in model.blocks:
        blk.attn.register_forward_hook(lambda *_: calls.__setitem__("attn", calls["attn"] + 1))
    loss_ckpt, grads_ckpt = loss_and_grads(model, ids)
    assert loss_ckpt == loss
    for g, g_ckpt in zip(grads, grads_ckpt):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-5, atol=1e-7)
    iterations = FAMILIES["inl"]["num_iterations"]
    assert calls == {"controller": 2 * len(modules) * iterations, "attn": len(modules)}

    def saved_bytes(m: torch.nn.Module) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.nbytes) or t, lambda t: t):
            m(ids[:, :-1])
        return sum(sizes)

    assert saved_bytes(model) < 0.5 * saved_bytes(built("inl"))
    with pytest.raises(ValueError, match="selective.*TransformerLM|selective.*names no modules"):
        checkpoint_blocks(built("transformer"), "selective")


def test_inn_checkpoint_layers_maps_to_layers():
    inn = build_model({"vocab_size": V, **FAMILIES["inn"], "checkpoint_layers": True}).cfg
    assert checkpointing_mode(TrainerConfig(), inn) == ("layers", 1)
    with pytest.raises(ValueError, match="model.checkpoint_layers and trainer.activation_checkpointing"):
        checkpointing_mode(TrainerConfig(activation_checkpointing="every_k"), inn)


def test_compile_gives_the_eager_losses():
    """Two SGD steps of a one-block Transformer, compiled vs eager (fp32 tolerance; no dropout:
    compiled code draws its masks from another generator)."""
    ids = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    runs = []
    for compiled in (False, True):
        model = built("transformer", n_layer=1, dropout=0.0)
        names = [n for n, _ in model.named_parameters()]
        if compiled:
            compile_blocks(model)
            assert [n for n, _ in model.named_parameters()] == names
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = []
        for _ in range(2):
            opt.zero_grad()
            steps.append(loss_and_grads(model, ids)[0])
            opt.step()
        runs.append(steps)
    assert runs[1] == pytest.approx(runs[0], rel=1e-5)


@pytest.mark.slow
def test_trainer_checkpointing_losses_and_mfu_only_with_a_peak(tmp_path, char_data):
    """Through `neurograph train` (DeepSpeed ZeRO-3): checkpointed every-k losses equal the plain run's;
    on CPU no train/mfu, unless trainer.peak_tflops gives a peak: then mfu = tflops / peak."""
    plain = train(tmp_path, char_data, "plain", "deepspeed.zero_stage=3")
    ckpt = train(tmp_path, char_data, "ckpt", "deepspeed.zero_stage=3", "trainer.activation_checkpointing=layers",
                 "trainer.peak_tflops=0.5")
    assert losses(ckpt) == losses(plain)
    assert not any("train/mfu" in r for r in plain)
    logged = [r for r in ckpt if "train/tflops" in r]
    assert logged
    for r in logged:
        assert r["train/mfu"] == pytest.approx(r["train/tflops"] / 0.5)
        assert r["train/hfu"] == pytest.approx(r["train/mfu"] * 4 / 3)
