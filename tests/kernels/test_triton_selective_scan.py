"""The Triton selective scan (kernels/selective_scan/triton.py) against the sequential reference:
outputs, final state and every gradient, on sizes that are neither powers of two nor multiples of
the kernel's blocks or chunks, with outputs NaN-poisoned before each launch."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels.selective_scan import selective_scan, selective_scan_ref
from tests.kernels.conftest import assert_close

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b, d, t, s, dtype, device, full=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x = dict(u=r(b, d, t), delta=0.5 * r(b, d, t), A=-torch.rand(d, s, generator=g) * 2 - 0.1, B=r(b, s, t),
             C=r(b, s, t), D=r(d) if full else None, z=r(b, d, t) if full else None,
             delta_bias=0.5 * r(d) if full else None)
    return {k: None if v is None else v.to(device, dtype).requires_grad_() for k, v in x.items()}


def _scan(fn, x, softplus, **kw):
    return fn(*(x[k] for k in NAMES[:7]), delta_bias=x["delta_bias"], delta_softplus=softplus,
              return_last_state=True, **kw)


def _outputs_and_grads(fn, x, softplus, seed=1, **kw):
    y, last = _scan(fn, x, softplus, **kw)
    g = torch.Generator().manual_seed(seed)
    gy, gl = torch.randn(y.shape, generator=g).to(y), torch.randn(last.shape, generator=g).to(last)
    inputs = [v for v in x.values() if v is not None]
    return [y, last, *torch.autograd.grad((y.float() * gy).sum() + (last * gl).sum(), inputs)]


@pytest.mark.parametrize("b,d,t,s,chunk,full", [
    (1, 5, 300, 4, None, True),  # long: 19 chunks of 16, the last partial
    (2, 33, 37, 16, 8, False),   # channels over one block; no D, z, bias, softplus
    (1, 70, 1, 16, None, True),  # a single step
])
def test_triton_scan_matches_reference(b, d, t, s, chunk, full, triton_device, poisoned):
    x = _inputs(b, d, t, s, torch.float32, triton_device, full)
    expected = _outputs_and_grads(selective_scan_ref, x, softplus=full)
    actual = _outputs_and_grads(selective_scan, x, softplus=full, impl="triton", chunk_size=chunk)
    names = ["y", "last_state"] + [f"grad {k}" for k in NAMES if x[k] is not None]
    for a, e, name in zip(actual, expected, names):
        assert_close(a, e, name=name)


def test_triton_scan_half_precision_inputs_fp32_state(triton_device, poisoned):
    """bf16 inputs: loaded, computed in fp32 (state and last state fp32), outputs in bf16."""
    x = _inputs(2, 6, 19, 4, torch.bfloat16, triton_device)
    expected = _outputs_and_grads(selective_scan_ref, x, softplus=True)
    actual = _outputs_and_grads(selective_scan, x, softplus=True, impl="triton", chunk_size=5)
    assert actual[0].dtype == torch.bfloat16 and actual[1].dtype == torch.float32
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        assert_close(a, e, rtol=2e-2)


def test_triton_scan_reads_strided_time_major_views(triton_device, poisoned):
    """The model's layout: [B, d, T] views of time-major tensors, channels contiguous; z (and B, C)
    are slices of wider projections, so not even dense (gradients are then laid out differently)."""
    x = _inputs(2, 7, 11, 3, torch.float32, triton_device)

    def time_major_slice(v):  # same values, as a view of a [B, T, 2F] tensor's first half
        wide = torch.cat([v.detach().transpose(1, 2), torch.zeros_like(v.detach().transpose(1, 2))], -1)
        return wide[..., : v.shape[1]].transpose(1, 2).requires_grad_()

    views = {k: time_major_slice(v) if v is not None and v.dim() == 3 else v for k, v in x.items()}
    assert views["z"].stride(1) == 1 and not views["z"].is_contiguous()
    expected = _outputs_and_grads(selective_scan_ref, x, softplus=True)
    actual = _outputs_and_grads(selective_scan, views, softplus=True, impl="triton")
    for a, e in zip(actual, expected):
        assert_close(a, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (mamba-ssm's kernel)")
def test_triton_scan_matches_mamba_ssm():
    pytest.importorskip("mamba_ssm")
    x = _inputs(2, 64, 300, 16, torch.float32, "cuda")
    expected = _outputs_and_grads(selective_scan, x, softplus=True, impl="cuda")
    actual = _outputs_and_grads(selective_scan, x, softplus=True, impl="triton")
    for a, e in zip(actual, expected):
        assert_close(a, e, rtol=1e-3)
