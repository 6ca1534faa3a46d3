"""Mamba-1 block (SPEC section 1) and the Mamba-stack baseline."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neurograph.model import build_model
from neurograph.model.mamba import MambaBlock


def test_block_initialisation_follows_spec():
    torch.manual_seed(0)
    blk = MambaBlock(64, d_state=16)
    assert blk.d_inner == 128 and blk.dt_rank == math.ceil(64 / 16)
    torch.testing.assert_close(blk.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    torch.testing.assert_close(blk.D, torch.ones(128))
    dt = F.softplus(blk.dt_proj.bias)  # softplus(bias) recovers the sampled dt
    assert dt.min() >= 1e-3 - 1e-6 and dt.max() <= 1e-1 + 1e-6
    assert dt.max() / dt.min() > 10  # spread log-uniformly, not a constant
    assert blk.A_log._no_weight_decay and blk.D._no_weight_decay
    assert not getattr(blk.in_proj.weight, "_no_weight_decay", False)
    shapes = {n: tuple(p.shape) for n, p in blk.named_parameters()}
    assert shapes["in_proj.weight"] == (256, 64) and shapes["x_proj.weight"] == (4 + 32, 128)
    assert shapes["dt_proj.weight"] == (128, 4) and shapes["out_proj.weight"] == (64, 128)


@pytest.mark.parametrize("options", [
    dict(), dict(n_neurons=3, per_neuron_conv=True), dict(n_neurons=3, adapter_rank=2)])
def test_block_step_equals_forward(options):
    torch.manual_seed(0)
    blk = MambaBlock(16, d_state=4, **options)
    if options.get("adapter_rank"):
        torch.nn.init.normal_(blk.adapter_up, std=0.1)  # zero at init; make it count
    x = torch.randn(2, 3, 11, 16)  # [B, N, T, D]
    y_full = blk(x)
    y_pre, state = blk(x[:, :, :4], return_state=True)
    torch.testing.assert_close(y_pre, y_full[:, :, :4], rtol=1e-5, atol=1e-6)
    outs = []
    for t in range(4, 11):
        y, state = blk.step(x[:, :, t], state)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 2), y_full[:, :, 4:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", pytest.param("cpp", marks=pytest.mark.slow)])
def test_block_scan_implementations_agree(impl):
    torch.manual_seed(0)
    blk = MambaBlock(16, d_state=4)
    x = torch.randn(2, 19, 16, requires_grad=True)
    outs, grads = [], []
    for impl in ("sequential", impl):
        blk.scan_impl, blk.chunk_size = impl, 8
        y = blk(x)
        outs.append(y)
        grads.append(torch.autograd.grad(y.square().sum(), [x, blk.A_log, blk.in_proj.weight]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _small_stack(**kw):
    torch.manual_seed(0)
    return build_model(dict(arch="mamba_stack", vocab_size=27, d_model=32, n_layer=2, d_state=4, **kw)).eval()


def test_stack_is_causal():
    m = _small_stack()
    x = torch.randint(0, 27, (2, 20))
    x2 = x.clone()
    x2[:, 12] = (x2[:, 12] + 1) % 27
    a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4


def test_stack_generate_equals_full_forward_greedy():
    m = _small_stack()
    prompt = torch.randint(0, 27, (2, 7))
    out = m.generate(prompt, 6)  # greedy from the recurrent state
    ids = prompt
    for _ in range(6):  # recompute the whole sequence each time, no recurrent state
        ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_stack_parameter_count_is_matched_to_inn():
    m = build_model(dict(arch="mamba_stack", vocab_size=27))
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 4.2e6) / 4.2e6 < 0.05, n
    assert m.flops_per_token(256) > 6 * (n - 27 * m.cfg.d_model)  # >= 3 x 2 FLOPs per matmul weight


@pytest.mark.parametrize("impl", ["sequential", "chunked", pytest.param("cpp", marks=pytest.mark.slow)])
def test_block_forward_equals_mamba_simple(impl):
    """The block against mamba-ssm's Mamba forward re-stated in tests/kernels/scan_reference.py (float64)."""
    from tests.kernels.scan_reference import mamba_simple_forward

    torch.manual_seed(0)
    blk = MambaBlock(12, d_state=5, scan_impl=impl, chunk_size=4).double()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), mamba_simple_forward(blk, x), rtol=1e-10, atol=1e-10)


def test_stack_forward_is_pre_norm_residual_blocks_with_tied_head():
    m = _small_stack()
    ids = torch.randint(0, 27, (2, 10))
    x = m.embed.weight[ids]
    for norm, blk in zip(m.norms, m.blocks):
        x = x + blk(norm(x))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), m.ln_f(x) @ m.embed.weight.T, rtol=1e-6, atol=1e-6)
