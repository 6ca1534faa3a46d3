"""Selective scan: every implementation against the sequential reference."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels import selective_scan as ss
from neurograph.kernels.selective_scan import chunked


def _inputs(b, d, s, t, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    tensors = dict(
        u=r(b, d, t), delta=0.5 * r(b, d, t), A=-torch.rand(d, s, generator=g, dtype=dtype) * 4,
        B=r(b, s, t), C=r(b, s, t), D=r(d), z=r(b, d, t), delta_bias=0.5 * r(d))
    return {k: v.requires_grad_() for k, v in tensors.items()}


def _run(fn, x, **kw):
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], delta_bias=x["delta_bias"],
              delta_softplus=True, return_last_state=True, **kw)


def _grads(y, last, x, seed=1):
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gl = torch.randn(last.shape, generator=g, dtype=last.dtype)
    return torch.autograd.grad((y * gy).sum() + (last * gl).sum(), list(x.values()))


@pytest.mark.parametrize("b,d,s,t,chunk", [
    (2, 5, 3, 13, 4),    # odd length, partial last chunk
    (1, 7, 4, 1, 4),     # a single step
    (3, 6, 5, 37, 8),    # odd length, several chunks
    (2, 4, 16, 16, 16),  # exactly one chunk
    (2, 3, 2, 29, 64),   # chunk longer than the sequence
])
def test_chunked_matches_reference_outputs_and_gradients(b, d, s, t, chunk):
    x = _inputs(b, d, s, t)
    y_ref, last_ref = _run(ss.selective_scan_ref, x)
    y, last = _run(ss.selective_scan_chunked, x, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    for name, g, g_ref in zip(x, _grads(y, last, x), _grads(y_ref, last_ref, x)):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", ["chunked", pytest.param("cpp", marks=pytest.mark.slow)])
def test_fp32_matches_reference_without_optional_inputs(impl):
    x = _inputs(2, 40, 4, 45, dtype=torch.float32)  # 40 channels: one full C++ block and a partial one
    args = (x["u"], x["delta"].detach().abs().requires_grad_(), x["A"], x["B"], x["C"])
    y_ref = ss.selective_scan_ref(*args)
    y = ss.selective_scan(*args, impl=impl, chunk_size=16)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(y_ref.square().sum(), args)
    g = torch.autograd.grad(y.square().sum(), args)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_auto_chunk_size_matches_reference():
    assert ss.auto_chunk_size(512, 256, 512, 16) == 64  # big batch: the longest chunk allowed
    assert ss.auto_chunk_size(1, 2048, 64, 16) < 2048  # small batch: chunks run in parallel


def test_chunked_channel_tiles_cover_every_channel_once_cache_sized_on_cpu_wide_on_cuda():
    """The benchmark scan's shape (B 256, d 512, S 16, 8 chunks of 64): CPU tiles keep a step's
    state at most _STEP_ELEMENTS; CUDA tiles keep a tile's chunk tensors within _CUDA_TILE_ELEMENTS."""
    for device, per_channel, budget in (("cpu", 256 * 8 * 16, chunked._STEP_ELEMENTS),
                                        ("cuda", 64 * 256 * 8 * 16, chunked._CUDA_TILE_ELEMENTS)):
        tiles = chunked._channel_tiles(256, 8, 510, 16, 64, torch.device(device))
        assert [lo for lo, _ in tiles] == [0] + [hi for _, hi in tiles[:-1]] and tiles[-1][1] == 510
        widths = [hi - lo for lo, hi in tiles]
        assert max(widths) * per_channel <= budget < (max(widths) + 1) * per_channel
    assert len(chunked._channel_tiles(256, 8, 512, 16, 64, torch.device("cuda"))) == 4
    x = _inputs(2, 6, 3, 70)
    y_ref, last_ref = _run(ss.selective_scan_ref, x)
    y, last = _run(ss.selective_scan, x)  # impl auto, chunk size auto
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(_grads(y, last, x), _grads(y_ref, last_ref, x)):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


def test_chunked_tiles_channels_like_one_tile(monkeypatch):
    """Splitting channels into many tiles (small step budget) changes nothing."""
    x = _inputs(2, 9, 3, 21)
    y0, l0 = _run(ss.selective_scan_chunked, x, chunk_size=5)
    g0 = _grads(y0, l0, x)
    monkeypatch.setattr(chunked, "_STEP_ELEMENTS", 1)
    y1, l1 = _run(ss.selective_scan_chunked, x, chunk_size=5)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(y1, l1, x), g0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_backward_saves_only_chunk_boundary_states():
    """The [B, T, d, S] state is never kept for backward: what autograd saves is far smaller."""
    b, d, s, t, chunk = 2, 16, 8, 256, 32
    x = _inputs(b, d, s, t, dtype=torch.float32)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ss.selective_scan_chunked(x["u"], x["delta"], x["A"], x["B"], x["C"], chunk_size=chunk)
    full_state = b * t * d * s
    # Inputs [B, T, d] and the chunk-start states [B, T/L, d, S]; nothing per (t, s).
    assert max(saved) <= max(b * t * d, b * (t // chunk) * d * s)
    assert sum(saved) < full_state / 2


def test_dispatch():
    x = _inputs(1, 4, 2, 10)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    cpu_default = ss.selective_scan_cpp if ss.cpp_scan_available() else ss.selective_scan_chunked
    torch.testing.assert_close(ss.selective_scan(*args, impl="auto"), cpu_default(*args), rtol=0, atol=0)
    torch.testing.assert_close(ss.selective_scan(*args, impl="sequential"), ss.selective_scan_ref(*args), rtol=0, atol=0)
    with pytest.raises(ValueError):
        ss.selective_scan(*args, impl="nope")
    if not ss.cuda_scan_available():
        with pytest.raises(RuntimeError):
            ss.selective_scan(*args, impl="cuda")


@pytest.mark.skipif(not ss.cuda_scan_available(), reason="mamba-ssm CUDA kernel not installed (gpu extra)")
def test_cuda_kernel_matches_reference():
    x = {k: v.detach().float().cuda().requires_grad_() for k, v in _inputs(2, 8, 4, 33).items()}
    y, last = _run(ss.selective_scan, x, impl="cuda")
    y_ref, last_ref = _run(ss.selective_scan_ref, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # builds the C++ extension on first use (~1 min, then cached)
@pytest.mark.parametrize("b,d,s,t,chunk", [(2, 5, 3, 13, 4), (3, 21, 5, 37, 8), (1, 7, 4, 1, None),
                                            (2, 70, 3, 19, 5)])  # 70 channels: blocks of 32, 32 and 6
def test_cpp_matches_reference_outputs_and_gradients(b, d, s, t, chunk):
    x = _inputs(b, d, s, t)
    y_ref, last_ref = _run(ss.selective_scan_ref, x)
    y, last = _run(ss.selective_scan, x, impl="cpp", chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    for name, g, g_ref in zip(x, _grads(y, last, x), _grads(y_ref, last_ref, x)):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")
    x32 = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    torch.testing.assert_close(_run(ss.selective_scan, x32, impl="cpp")[0], _run(ss.selective_scan_ref, x32)[0],
                               rtol=1e-5, atol=1e-5)
