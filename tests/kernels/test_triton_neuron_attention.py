"""The Triton neuron-graph attention (kernels/neuron_attention/triton.py), dense and top-k,
against the PyTorch references: outputs and the gradients of q, k, v, on strided views like the
routers pass, with outputs NaN-poisoned before each launch; with attention dropout, against PyTorch
attention that applies the kernels' own Philox mask."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels.neuron_attention import neuron_attention, topk_neuron_attention
from neurograph.kernels.neuron_attention.triton import TritonNeuronAttention, TritonTopKAttention, attention_dropout_scale, draw_seed
from tests.kernels.conftest import assert_close


def _qkv(m, n, h, hd, device, seed=0):
    """q, k, v [M, N, H, hd] as views of one [M, N, 3, H, hd] projection (the routers' layout)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(m, n, 3, h, hd, generator=g).to(device).requires_grad_()
    return qkv, qkv.unbind(2)


def _check(fn, device, m, n, h, hd, *extra):
    qkv, (q, k, v) = _qkv(m, n, h, hd, device)
    gy = torch.randn(m, n, h, hd, generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for impl in ("reference", "triton"):
        y = fn(q, k, v, *extra, impl=impl)
        results.append((y, *torch.autograd.grad((y * gy).sum(), qkv)[0].unbind(2)))
    for a, e, name in zip(results[1], results[0], ("y", "grad q", "grad k", "grad v")):
        assert_close(a, e, name=name)


@pytest.mark.parametrize("m,n,h,hd", [(3, 5, 2, 8), (2, 33, 1, 70), (1, 1, 3, 4)])
def test_triton_dense_attention_matches_reference(m, n, h, hd, triton_device, poisoned):
    _check(neuron_attention, triton_device, m, n, h, hd)


@pytest.mark.parametrize("m,n,h,hd,kk", [(3, 33, 2, 8, 5), (2, 5, 1, 70, 5), (2, 7, 2, 4, 1)])
def test_triton_topk_attention_matches_reference(m, n, h, hd, kk, triton_device, poisoned):
    """Random picks with repeats across neurons (so backward's scatter adds collide)."""
    g = torch.Generator().manual_seed(2)
    idx = torch.stack([torch.randperm(n, generator=g)[:kk] for _ in range(m * n)]).view(m, n, kk).to(triton_device)
    _check(topk_neuron_attention, triton_device, m, n, h, hd, idx)


def _dense_with_scale(q, k, v, drop):
    """PyTorch dense attention whose probabilities [M, H, N, N] are multiplied by drop."""
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [M, H, N, hd]
    w = torch.softmax(qh @ kh.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) * drop
    return (w @ vh).transpose(1, 2)


def _topk_with_scale(q, k, v, idx, drop):
    """PyTorch top-k attention whose probabilities [M, N, H, k] are multiplied by drop."""
    rows = torch.arange(q.shape[0], device=q.device)[:, None, None]
    k_sel, v_sel = k[rows, idx], v[rows, idx]  # [M, N, k, H, hd]
    w = torch.softmax((q[:, :, None] * k_sel).sum(-1) / q.shape[-1] ** 0.5, dim=2) * drop.transpose(2, 3)
    return (w[..., None] * v_sel).sum(2)


@pytest.mark.parametrize("routing", ["dense", "topk"])
def test_triton_attention_dropout_matches_reference_with_its_mask(routing, triton_device, poisoned):
    """With dropout 0.3 the kernels equal PyTorch attention with the kernels' own Philox mask
    (attention_dropout_scale of the same seed), forward and backward (backward recomputes the mask);
    the mask drops about 30% and differs between seeds; the dispatch draws its seed from torch's generator."""
    m, n, h, hd, kk, p = 2, 17, 2, 8, 5, 0.3  # N over two query blocks
    torch.manual_seed(0)
    seed = draw_seed()
    qkv, (q, k, v) = _qkv(m, n, h, hd, triton_device)
    g = torch.Generator().manual_seed(2)
    idx = torch.stack([torch.randperm(n, generator=g)[:kk] for _ in range(m * n)]).view(m, n, kk).to(triton_device)
    if routing == "dense":
        shape, fast, ref, dispatch = (m, h, n, n), TritonNeuronAttention.apply, _dense_with_scale, neuron_attention
        args = (q, k, v)
    else:
        shape, fast, ref, dispatch = (m, n, h, kk), TritonTopKAttention.apply, _topk_with_scale, topk_neuron_attention
        args = (q, k, v, idx)
    drop = attention_dropout_scale(seed, p, shape, triton_device)
    assert set(drop.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p)).item()}
    assert abs((drop == 0).float().mean().item() - p) < 0.05
    assert not torch.equal(drop, attention_dropout_scale(seed + 1, p, shape, triton_device))
    gy = torch.randn(m, n, h, hd, generator=g).to(triton_device)
    results = []
    for y in (ref(*args, drop), fast(*args, p, seed)):
        results.append((y, *torch.autograd.grad((y * gy).sum(), qkv)[0].unbind(2)))
    for a, e, name in zip(results[1], results[0], ("y", "grad q", "grad k", "grad v")):
        assert_close(a, e, name=name)
    torch.manual_seed(0)
    assert torch.equal(dispatch(*args, impl="triton", dropout=p), results[1][0])


def test_auto_takes_sdpa_for_dense_and_triton_for_topk_on_cuda(monkeypatch):
    """The dispatch's choice on a CUDA tensor, which this machine has not: the device check is replaced (a mock
    for the device only). Dense runs through scaled_dot_product_attention (the Triton kernel measured 0.78x
    eager on an H200), top-k through Triton (3.8x)."""
    from neurograph.kernels import neuron_attention as dispatch

    chosen = []
    real = dispatch._use_triton
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(dispatch, "_use_triton", lambda *a, **kw: chosen.append(real(*a, **kw)) or False)
    x = torch.randn(1, 4, 1, 8)
    neuron_attention(x, x, x)
    topk_neuron_attention(x, x, x, torch.zeros(1, 4, 2, dtype=torch.long))
    assert chosen == [False, True]
