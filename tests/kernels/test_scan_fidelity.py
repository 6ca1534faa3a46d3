"""Every selective-scan backend against mamba-ssm's `selective_scan_ref` (`selective_scan_materialised`,
in float64), and the input checks every backend runs before any kernel: malformed shapes, dtypes and
devices, d = 1 with T > 1, T = 0, and mixed precision."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels import selective_scan as ss

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
BACKENDS = ["sequential", "chunked", pytest.param("cpp", marks=pytest.mark.slow)]


def _inputs(b, d, s, t, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return dict(u=r(b, d, t), delta=0.5 * r(b, d, t), A=-torch.rand(d, s, generator=g, dtype=dtype) * 4,
                B=r(b, s, t), C=r(b, s, t), D=r(d), z=r(b, d, t), delta_bias=0.5 * r(d))


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("b,d,s,t,chunk", [
    (3, 5, 3, 7, 3),    # odd everything, partial last chunk
    (1, 1, 2, 9, 4),    # a single channel, T > 1
    (2, 7, 1, 5, None),  # a single state
    (2, 3, 5, 1, None),  # a single step
])
def test_backend_matches_mamba_ssm_reference_outputs_and_all_gradients(impl, b, d, s, t, chunk):
    x = {k: v.requires_grad_() for k, v in _inputs(b, d, s, t).items()}
    kw = {} if impl == "sequential" else dict(chunk_size=chunk)
    y, last = ss.selective_scan(*x.values(), delta_softplus=True, return_last_state=True, impl=impl, **kw)
    y_ref, last_ref = ss.selective_scan_materialised(*x.values(), delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(last, last_ref, rtol=1e-11, atol=1e-11)
    g = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(last.shape, generator=g, dtype=y.dtype)
    grads = torch.autograd.grad((y * gy).sum() + (last * gl).sum(), list(x.values()))
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (last_ref * gl).sum(), list(x.values()))
    for name, got, want in zip(ARGS, grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


def _malformed():
    """(argument, replacement, message fragment): one wrong input at a time, for b, d, s, t = 2, 4, 3, 6."""
    f = torch.float32
    return [
        ("u", torch.zeros(2, 4, dtype=f), "u must be \\[Bz, d, T\\]"),
        ("delta", torch.zeros(2, 4, 5, dtype=f), "delta must be \\[Bz, d, T\\] = \\[2, 4, 6\\]"),
        ("A", torch.zeros(5, 3, dtype=f), "A must be \\[d, S\\] with d = 4"),
        ("B", torch.zeros(2, 4, 6, dtype=f), "B must be \\[Bz, S, T\\] = \\[2, 3, 6\\]"),   # wrong state size
        ("C", torch.zeros(1, 3, 6, dtype=f), "C must be \\[Bz, S, T\\] = \\[2, 3, 6\\]"),   # wrong batch
        ("D", torch.zeros(3, dtype=f), "D must be \\[d\\] = \\[4\\]"),
        ("z", torch.zeros(2, 4, 5, dtype=f), "z must be \\[Bz, d, T\\] = \\[2, 4, 6\\]"),  # too short
        ("delta_bias", torch.zeros(2, dtype=f), "delta_bias must be \\[d\\] = \\[4\\]"),
        ("u", torch.zeros(2, 4, 6, dtype=torch.int64), "u must be floating point"),
        ("B", torch.zeros(2, 3, 6, dtype=f, device="meta"), "B is on meta"),
        ("C", [[0.0]], "C must be a tensor"),
    ]


@pytest.mark.parametrize("impl", ["sequential", "chunked", "cpp", "cuda", "triton"])
@pytest.mark.parametrize("arg,bad,message", _malformed(), ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(_malformed())])
def test_every_backend_rejects_malformed_input_before_running(impl, arg, bad, message):
    x = _inputs(2, 4, 3, 6, dtype=torch.float32)
    x[arg] = bad
    with pytest.raises(ValueError, match=f"selective scan: {message}"):
        ss.selective_scan(*x.values(), delta_softplus=True, impl=impl)


@pytest.mark.parametrize("impl", BACKENDS)
def test_empty_sequence_gives_empty_output_and_zero_state(impl):
    x = _inputs(2, 3, 4, 0)
    y, last = ss.selective_scan(*x.values(), delta_softplus=True, return_last_state=True, impl=impl)
    assert y.shape == (2, 3, 0) and y.dtype == torch.float64
    assert torch.equal(last, torch.zeros(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("impl", BACKENDS)
def test_mixed_precision_computes_in_the_widest_dtype(impl):
    """float64 u, delta, B, C, z beside float32 A, D, delta_bias (a float64 Mamba block) compute in
    float64 like the reference's type promotion; the output has u's dtype."""
    x = _inputs(2, 5, 3, 7)
    for k in ("A", "D", "delta_bias"):
        x[k] = x[k].float()
    y = ss.selective_scan(*x.values(), delta_softplus=True, impl=impl)
    y_ref, _ = ss.selective_scan_materialised(*(v.double() for v in x.values()), delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)


def test_float64_mamba_block_runs_with_the_default_backend():
    from neurograph.model.mamba import MambaBlock

    torch.manual_seed(0)
    blk = MambaBlock(8, d_state=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    y = blk(x)
    blk.scan_impl = "sequential"
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, blk(x), rtol=1e-11, atol=1e-11)
