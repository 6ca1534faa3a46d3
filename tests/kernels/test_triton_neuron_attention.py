"""The Triton neuron-graph attention (kernels/neuron_attention_triton.py), dense and top-k,
against the PyTorch references: outputs and the gradients of q, k, v, on strided views like the
routers pass, with outputs NaN-poisoned before each launch."""
from __future__ import annotations

import pytest
import torch

from kernels.neuron_attention import neuron_attention, topk_neuron_attention
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
