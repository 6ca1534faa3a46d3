"""The Triton causal conv1d + SiLU (kernels/causal_conv1d/triton.py) against the PyTorch reference:
output and the gradients of x, weight and bias, with outputs NaN-poisoned before each launch; odd
sizes across the kernel's time and channel blocks, per-neuron weights, the half-of-in_proj views the
Mamba block passes, bf16 inputs; and the dispatch's choices."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels import causal_conv1d as cc
from neurograph.kernels.causal_conv1d.triton import BLOCK_T
from tests.kernels.conftest import assert_close


def _case(lead, t, d, k, groups, device, dtype=torch.float32, bias=True, seed=0):
    """x [*lead, T, d] as the first half of a [*lead, T, 2d] projection (channel stride 1, time stride 2d),
    weight [d, K] or [G, d, K], bias like the weight without K."""
    g = torch.Generator().manual_seed(seed)
    wshape = (groups, d, k) if groups else (d, k)
    xz = torch.randn(*lead, t, 2 * d, generator=g).to(device, dtype).requires_grad_()
    w = (0.5 * torch.randn(wshape, generator=g)).to(device, dtype).requires_grad_()
    b = (0.5 * torch.randn(wshape[:-1], generator=g)).to(device, dtype).requires_grad_() if bias else None
    return xz, w, b


def _compare(lead, t, d, k, groups, device, dtype=torch.float32, bias=True, rtol=1e-4):
    xz, w, b = _case(lead, t, d, k, groups, device, dtype, bias)
    gy = torch.randn(*lead, t, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    wanted = [v for v in (xz, w, b) if v is not None]
    results = {}
    for impl in ("reference", "triton"):
        x = xz[..., :d]
        if impl == "reference" and dtype != torch.float32:  # the reference in fp32 on the same (rounded) values
            x, w_in, b_in = x.float(), w.float(), None if b is None else b.float()
        else:
            w_in, b_in = w, b
        y = cc.causal_conv1d_silu(x, w_in, b_in, impl=impl)
        results[impl] = (y, *torch.autograd.grad((y * gy.to(y.dtype)).sum(), wanted))
    names = ["y", "dx", "dweight"] + (["dbias"] if bias else [])
    for name, want, got in zip(names, results["reference"], results["triton"]):
        assert got.dtype == dtype, name
        assert_close(got, want, rtol=rtol, name=name)


@pytest.mark.parametrize("lead,t,d,k,groups", [
    ((3,), 2 * BLOCK_T + 5, 70, 4, 0),  # several time blocks, the last partial; channels over two blocks
    ((2, 5), 13, 33, 4, 5),             # per-neuron kernels: x [B, N, T, d], weight [N, d, K]
    ((4,), 1, 3, 4, 0),                 # one step, shorter than the kernel
    ((2,), 3, 130, 5, 0),               # T < K - 1 ... K: the causal padding's edge; K not a power of two
    ((1, 2), BLOCK_T + 1, 65, 2, 2),    # a step past a block edge, two groups
])
def test_triton_conv_matches_reference(lead, t, d, k, groups, triton_device, poisoned):
    _compare(lead, t, d, k, groups, triton_device)


def test_triton_conv_without_bias(triton_device, poisoned):
    _compare((2, 3), 29, 40, 4, 3, triton_device, bias=False)


def test_triton_conv_bf16(triton_device, poisoned):
    """bf16 in and out, fp32 inside: within a few bf16 roundings of the fp32 reference on the same values."""
    _compare((2, 4), 70, 48, 4, 4, triton_device, dtype=torch.bfloat16, rtol=2e-2)


def test_triton_conv_empty_sequences(triton_device):
    x = torch.zeros(3, 0, 8, device=triton_device, requires_grad=True)
    w = torch.ones(8, 4, device=triton_device, requires_grad=True)
    y = cc.causal_conv1d_silu(x, w, None, impl="triton")
    y.sum().backward()
    assert y.shape == (3, 0, 8) and torch.equal(w.grad, torch.zeros_like(w))


def test_conv_dispatch_choices():
    """auto: the C++ kernel on CPU float tensors, the reference on bf16 or meta ones; a CUDA tensor would
    take causal-conv1d's kernel where it applies, else Triton; explicit impls that cannot apply say why."""
    x, w = torch.randn(2, 5, 8), torch.randn(8, 4)
    assert cc.resolve_conv_impl("auto", x, w) == ("cpp" if cc.cpu_extension_available(cc.SOURCE) else "reference")
    assert cc.resolve_conv_impl("auto", x.bfloat16(), w.bfloat16()) == "reference"
    assert cc.resolve_conv_impl("auto", x.to("meta"), w.to("meta")) == "reference"
    assert cc.resolve_conv_impl("triton", x, w) == "triton"
    with pytest.raises(ValueError, match="unknown causal conv1d impl 'fast'"):
        cc.resolve_conv_impl("fast", x, w)
    with pytest.raises(ValueError, match="impl 'triton' needs a weight"):
        cc.causal_conv1d_silu(x, torch.randn(3, 8, 4), None, impl="triton")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="impl 'cuda' needs the causal-conv1d package"):
            cc.causal_conv1d_silu(x, w, None, impl="cuda")


@pytest.mark.skipif(not (torch.cuda.is_available() and cc._cuda_conv is not None),
                    reason="causal-conv1d CUDA kernel not installed (gpu extra)")
def test_cuda_conv_matches_reference():
    """causal-conv1d's kernel (auto's CUDA choice) on the Mamba block's layout, against the reference."""
    xz, w, b = _case((2, 3), 70, 64, 4, 0, "cuda")
    x = xz[..., :64]
    assert cc.resolve_conv_impl("auto", x, w) == "cuda"
    gy = torch.randn(2, 3, 70, 64, device="cuda")
    got, want = ((y, *torch.autograd.grad((y * gy).sum(), (xz, w, b)))
                 for y in (cc.causal_conv1d_silu(x, w, b, impl=i) for i in ("cuda", "reference")))
    for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want):
        assert_close(a, e, name=name)
