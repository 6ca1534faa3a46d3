"""Per-token adaptive stopping on a tiny INL trained in the test on real text."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurograph.model import build_model
from tests.conftest import corpus_text


@pytest.fixture(scope="module")
def trained_tiny():
    """A char-level INL (D 64, 2 layers, K 5, no FFN) trained 120 AdamW steps on Shakespeare,
    with the convergence loss that lets tokens settle after `min_iterations` (~6 s)."""
    text = corpus_text(chars=200_000)
    chars = sorted(set(text))
    data = torch.tensor([{c: i for i, c in enumerate(chars)}[c] for c in text])
    torch.manual_seed(0)
    model = build_model(dict(arch="inl", vocab_size=len(chars), d_model=64, n_layer=2, n_head=4, max_seq_len=64,
                             num_iterations=5, feedforward_dim=0, min_iterations=3, convergence_weight=10.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(120):
        ix = torch.randint(0, len(data) - 33, (16,), generator=gen)
        x = torch.stack([data[i : i + 32] for i in ix])
        y = torch.stack([data[i + 1 : i + 33] for i in ix])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        first = loss.item() if first is None else first
        opt.zero_grad()
        (loss + model.aux_loss()).backward()
        opt.step()
    assert loss.item() < first - 1.0  # it learned something
    held_out = torch.stack([data[i : i + 64] for i in range(150_000, 150_000 + 64 * 8, 64)])
    return model.eval(), held_out


def test_adaptive_stopping_same_logits_fewer_iterations(trained_tiny):
    model, ids = trained_tiny
    with torch.no_grad():
        model.set_adaptive_stopping(False)
        full = model(ids)
        assert model.iterations_used() is None
        model.set_adaptive_stopping(True, threshold=0.3, min_iterations=3)
        fast = model(ids)
    iters = model.iterations_used()  # [L, B, T]
    assert iters.shape == (2, 8, 64)
    assert int(iters.min()) >= 3 and int(iters.max()) <= 5
    mean_iters = iters.float().mean().item()
    assert mean_iters < 4.0, mean_iters  # >= 20% of the integrator iterations skipped
    assert (fast - full).abs().max().item() < 0.1
    assert (fast.argmax(-1) == full.argmax(-1)).float().mean().item() > 0.98
    # threshold 0: nothing stops -> bit-identical to the full iterations
    model.set_adaptive_stopping(True, threshold=0.0)
    with torch.no_grad():
        assert torch.equal(model(ids), full)
    assert bool((model.iterations_used() == 5).all())
    # infinite threshold: every token stops at min_iterations -> bit-identical to K = 3
    model.set_adaptive_stopping(True, threshold=float("inf"))
    with torch.no_grad():
        stopped_at_3 = model(ids)
        assert bool((model.iterations_used() == 3).all())
        model.set_adaptive_stopping(False)
        for it in model.integrators():
            it.num_iterations = 3
        try:
            assert torch.equal(model(ids), stopped_at_3)
        finally:
            for it in model.integrators():
                it.num_iterations = 5


def test_stopped_tokens_leave_the_computation(trained_tiny):
    """The controller only sees the still-active tokens: rows processed == iterations used."""
    model, ids = trained_tiny
    rows = []
    handle = model.controller.fc_out.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        model.set_adaptive_stopping(True, threshold=0.3, min_iterations=3)
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
        model.set_adaptive_stopping(False)
    assert sum(rows) == int(model.integrators()[0].last_iterations.sum() + model.integrators()[1].last_iterations.sum())
    assert sum(rows) < 2 * 5 * ids.numel()
    assert model.training is False and min(rows) < ids.numel()


def test_adaptive_stopping_is_inference_only(trained_tiny):
    model, ids = trained_tiny
    model.set_adaptive_stopping(True, threshold=1e9)
    model.train()
    try:
        model(ids[:1, :8])
        assert model.iterations_used() is None  # training always runs all K iterations
    finally:
        model.eval()
        model.set_adaptive_stopping(False)
