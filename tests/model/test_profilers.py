"""FlopCounterMode, torch.profiler and full backward hooks on one training step of every shipped
config (configs/*.yaml, configs/scale/*.yaml): MFU accounting and GPU profiling rely on them.

Each config's model section is built as shipped, with its trainer's activation checkpointing, but
smaller for CPU speed: only sizes shrink (width, depth, heads, neurons, FFN width, vocabulary),
every switch stays, so each step takes the shipped code path (INN: MambaBlock.recomputed's fused
C++ backward)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from neurograph.model import build_model, parse_model_config
from neurograph.trainer.acceleration import accelerate
from neurograph.trainer.config import TrainerConfig
from neurograph.trainer.evaluation import lm_loss

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(REPO.glob("configs/*.yaml")) + sorted(REPO.glob("configs/scale/*.yaml"))
SIZE_CAPS = dict(d_model=64, n_layer=2, n_head=4, n_neurons=64, feedforward_dim=128, d_ff=128, vocab_size=512)
BATCH, SEQ = 2, 32

config = pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))


def shrunk_model(path: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The config's model in training mode, sizes capped by SIZE_CAPS, and a batch of token ids."""
    raw = yaml.safe_load(path.read_text())
    section = {"vocab_size": 256, **raw["model"]}  # vocab_size unset: filled from the data by `neurograph train`
    section.update({k: min(cap, section[k]) for k, cap in SIZE_CAPS.items() if k in section})
    cfg = parse_model_config(section)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    accelerate(model, TrainerConfig(**raw.get("trainer", {})), cfg)
    return model, torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))


def train_step(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, loss (with the model's auxiliary term, as the trainer's), backward; the gradients."""
    torch.manual_seed(2)  # the same dropout draws in every step
    model.zero_grad(set_to_none=True)
    loss = lm_loss(model(ids[:, :-1]), ids[:, 1:])
    aux = getattr(model, "aux_loss", None)
    (loss + aux() if aux is not None else loss).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@config
def test_flop_counter_counts_a_training_step(path):
    """At least forward + backward of every nn.Linear once per token: 6 x tokens x weights (the
    LSTM's fused recurrence, aten.mkldnn_rnn_layer, has no formula in torch and counts nothing)."""
    model, ids = shrunk_model(path)
    with FlopCounterMode(display=False) as counter:
        train_step(model, ids)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert counter.get_total_flops() >= max(1, 6 * BATCH * SEQ * linear)


@config
def test_profiler_records_a_training_step(path):
    model, ids = shrunk_model(path)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(model, ids)
    names = {e.name for e in prof.events()}
    assert any(n.startswith("aten::") for n in names)
    assert any(n.startswith("autograd::engine::evaluate_function") for n in names)  # the backward too


@config
@pytest.mark.filterwarnings("ignore:Full backward hook is firing when gradients are computed")
def test_full_backward_hooks_fire_and_leave_gradients_alone(path):
    """A full backward hook on every module: each module whose output joined autograd reports its
    backward, and the gradients equal those of the step without hooks, bit for bit."""
    model, ids = shrunk_model(path)
    plain = train_step(model, ids)
    joined, fired = set(), set()
    for name, module in model.named_modules():
        module.register_forward_hook(lambda m, i, out, name=name: joined.update(
            [name] if any(isinstance(t, torch.Tensor) and t.requires_grad for t in tree_leaves(out)) else []))
        module.register_full_backward_hook(lambda m, gi, go, name=name: fired.add(name))
    hooked = train_step(model, ids)
    assert joined and joined <= fired
    assert hooked.keys() == plain.keys()
    for name, g in plain.items():
        assert torch.equal(hooked[name], g), name
