"""The C++ CPU kernels beside their PyTorch references: the Mamba block's causal conv + SiLU
(kernels/causal_conv1d/), the counter-based dropout (kernels/dropout/) and its use in the CPU
neuron attention, and all three C++ kernels (with the scan) on several threads."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from neurograph.kernels import causal_conv1d as cc
from neurograph.kernels import dropout as dr
from neurograph.kernels.cpu_extension import cpu_extension_available
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _compiled():
    """Build the kernels at the first test that needs them (not at collection), or skip without a compiler."""
    if not (cpu_extension_available("causal_conv1d/cpu.cpp") and cpu_extension_available("dropout/cpu.cpp")):
        pytest.skip("no C++ compiler: the PyTorch paths are the only ones")


def _conv_case(lead, t, d, k, groups, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # x as the block passes it: the first half of in_proj's output (row stride 2d, not contiguous)
    x = torch.randn(*lead, t, 2 * d, generator=g, dtype=dtype)[..., :d].requires_grad_()
    wshape = (groups, d, k) if groups else (d, k)
    w = torch.randn(wshape, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(wshape[:-1], generator=g, dtype=dtype).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("lead,t,d,k,groups", [
    ((3,), 37, 70, 4, 0),       # odd sizes, channels not a multiple of the 64-lane block
    ((2, 5), 13, 70, 4, 5),     # per-neuron kernels: x [B, N, T, d], weight [N, d, K]
    ((4,), 1, 3, 4, 0),         # one step, shorter than the kernel
    ((2,), 3, 130, 5, 0),       # T < K - 1 ... K: the causal padding's edge
    ((1, 2), 300, 65, 2, 2),    # long, two groups
])
def test_conv_matches_reference_outputs_and_gradients(lead, t, d, k, groups):
    x, w, b = _conv_case(lead, t, d, k, groups, torch.float64)
    results = {}
    for impl in ("reference", "cpp"):
        y = cc.causal_conv1d_silu(x, w, b, impl=impl)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        results[impl] = (y, *torch.autograd.grad((y * gy).sum(), (x, w, b)))
    for name, want, got in zip(("y", "dx", "dweight", "dbias"), results["reference"], results["cpp"]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


def test_conv_reference_is_a_causal_depthwise_conv():
    """The reference against torch's Conv1d (groups = channels, left padding K - 1)."""
    x, w, b = _conv_case((2,), 11, 6, 4, 0, torch.float64)
    conv = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w[:, None, :], b, groups=6).transpose(1, 2)
    torch.testing.assert_close(cc.causal_conv1d_silu(x, w, b, impl="reference"), F.silu(conv))


def test_conv_float32_without_bias_and_dispatch():
    x, w, _ = _conv_case((2, 3), 29, 40, 4, 0, torch.float32)
    y_ref = cc.causal_conv1d_silu(x, w, None, impl="reference")
    torch.testing.assert_close(cc.causal_conv1d_silu(x, w, None, impl="cpp"), y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cc.causal_conv1d_silu(x, w, None), y_ref, rtol=1e-5, atol=1e-6)  # auto: cpp
    with pytest.raises(ValueError, match="impl 'cpp' needs"):
        cc.causal_conv1d_silu(x.bfloat16(), w.bfloat16(), None, impl="cpp")
    with pytest.raises(ValueError, match="unknown causal conv1d impl"):
        cc.causal_conv1d_silu(x, w, None, impl="fast")


def test_dropout_keeps_one_minus_p_scaled_and_backward_uses_the_same_mask():
    x = torch.randn(1 << 20, dtype=torch.float64).requires_grad_()
    y = dr.counter_dropout(x, 0.3, seed=12345)
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.7) < 3e-3  # 1M draws: std 4.6e-4
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g != 0, kept) and torch.allclose(g[kept], torch.full_like(g[kept], 1 / 0.7))
    # a pure function of (seed, index): same seed same mask; another seed an independent one
    assert torch.equal(dr.counter_dropout(x, 0.3, seed=12345), y)
    other = dr.counter_dropout(x, 0.3, seed=12346) != 0
    assert abs((kept & other).double().mean().item() - 0.49) < 3e-3
    # neighbouring elements are independent (no stripes from the index hash)
    assert abs((kept[1:] & kept[:-1]).double().mean().item() - 0.49) < 3e-3


def test_dropout_follows_the_generator_and_checkpoint_recomputes_the_same_mask():
    x = torch.randn(64, 33).requires_grad_()
    torch.manual_seed(0)
    a = dr.dropout(x, 0.5, training=True)
    torch.manual_seed(0)
    assert torch.equal(dr.dropout(x, 0.5, training=True), a)
    assert torch.equal(dr.dropout(x, 0.5, training=False), x)
    # activation checkpointing recomputes the forward in backward: the gradient must see the mask
    # the forward used (dropout on the input of a square, so the gradient is 2 * y * mask / (1 - p))
    fn = lambda v: dr.dropout(v, 0.5, training=True).square()  # noqa: E731
    torch.manual_seed(1)
    y = checkpoint(fn, x, use_reentrant=False)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.manual_seed(1)
    y_plain = fn(x)
    (g_plain,) = torch.autograd.grad(y_plain.sum(), x)
    assert torch.equal(y, y_plain) and torch.equal(g, g_plain)


def test_dropout_elsewhere_is_torch_dropout():
    x = torch.ones(10_000, dtype=torch.bfloat16)  # not a dtype of the C++ kernel
    y = dr.dropout(x, 0.25, training=True).float()
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75), rtol=1e-2)
    assert abs(kept.float().mean().item() - 0.75) < 0.03


@pytest.mark.parametrize("routing", ["dense", "topk"])
def test_neuron_attention_drops_the_softmax_weights_with_the_counter_mask(routing):
    """The CPU neuron attention with dropout equals attention whose softmax weights are multiplied
    by the counter kernel's mask / (1 - p) for the same generator state, outputs and gradients."""
    from neurograph.kernels.neuron_attention import neuron_attention_reference, topk_attention_reference

    g = torch.Generator().manual_seed(3)
    M, N, H, hd, k, p = 5, 7, 2, 3, 4, 0.3
    q, kk, v = (torch.randn(M, N, H, hd, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    idx = torch.stack([torch.randperm(N, generator=g)[:k] for _ in range(M * N)]).view(M, N, k)
    if routing == "dense":
        fn = lambda p_: neuron_attention_reference(q, kk, v, p_)  # noqa: E731
        logits = torch.einsum("mihd,mjhd->mhij", q, kk) / hd ** 0.5  # [M, H, N, N]
        weight_shape, softmax_dim = (M, H, N, N), 3
        expected = lambda w: torch.einsum("mhij,mjhd->mihd", w, v)  # noqa: E731
    else:
        fn = lambda p_: topk_attention_reference(q, kk, v, idx, p_)  # noqa: E731
        rows = torch.arange(M)[:, None, None]
        k_sel, v_sel = kk[rows, idx], v[rows, idx]  # [M, N, k, H, hd]
        logits = torch.einsum("mihd,mikhd->mikh", q, k_sel) / hd ** 0.5  # [M, N, k, H]
        weight_shape, softmax_dim = (M, N, k, H), 2
        expected = lambda w: torch.einsum("mikh,mikhd->mihd", w, v_sel)  # noqa: E731
    torch.manual_seed(11)
    y = fn(p)
    torch.manual_seed(11)  # the same seed drawn: the mask the attention used, as mask / (1 - p)
    scale = dr.dropout(torch.ones(weight_shape, dtype=torch.float64), p, training=True)
    assert 0 < (scale == 0).sum() < scale.numel()
    y_ref = expected(torch.softmax(logits, dim=softmax_dim) * scale)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, (q, kk, v), gy), torch.autograd.grad(y_ref, (q, kk, v), gy))
    torch.testing.assert_close(fn(0.0), expected(torch.softmax(logits, dim=softmax_dim)))


def _on_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_kernels_run_on_torch_threads_with_the_one_thread_result():
    """Built with OpenMP (at::parallel_for is `#pragma omp` in a header: without -fopenmp every
    kernel silently ran on one thread), and the per-thread partial sums of the backward passes
    (conv weight and bias, scan A, D and delta_bias) give the single-thread gradients."""
    from neurograph.kernels.cpu_extension import load_cpu_extension
    from neurograph.kernels.selective_scan import selective_scan

    for source in ("causal_conv1d/cpu.cpp", "dropout/cpu.cpp", "selective_scan/cpu.cpp"):
        with open(load_cpu_extension(source).__file__, "rb") as f:
            assert b"GOMP_parallel" in f.read() or sys.platform == "darwin", f"{source} was built without OpenMP"
    g = torch.Generator().manual_seed(0)
    x, w, b = _conv_case((6,), 40, 70, 4, 0, torch.float64)
    u, delta, z = (torch.randn(6, 70, 40, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    A = (-torch.rand(70, 5, generator=g, dtype=torch.float64) * 4).requires_grad_()
    B, C = (torch.randn(6, 5, 40, generator=g, dtype=torch.float64) for _ in range(2))
    D, bias = (torch.randn(70, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))

    def run():
        y_conv = cc.causal_conv1d_silu(x, w, b, impl="cpp")
        y_scan = selective_scan(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True, impl="cpp")
        grads = torch.autograd.grad((y_conv.square().sum(), y_scan.square().sum()), (x, w, b, u, delta, z, A, D, bias))
        return (y_conv, y_scan, *grads)

    for one, two in zip(_on_threads(1, run), _on_threads(2, run)):
        torch.testing.assert_close(two, one, rtol=1e-12, atol=1e-12)


def test_a_kernel_builds_the_same_whichever_kernels_loaded_before_it():
    """Every process loads the kernels in its own order; the build flags of one must not depend on
    that order, or each process rebuilds (~45 s per kernel) what the last one built differently.
    (Regression: torch extends `extra_ldflags` in place, and a shared flag list grew with every load.)"""
    import subprocess

    from neurograph.kernels.cpu_extension import load_cpu_extension

    so = load_cpu_extension("dropout/cpu.cpp").__file__
    script = ("from neurograph.kernels.cpu_extension import load_cpu_extension as load; "
              "[load(s) for s in ('causal_conv1d/cpu.cpp', 'selective_scan/cpu.cpp', 'dropout/cpu.cpp')]")
    before = os.stat(so).st_mtime_ns
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600, cwd=REPO)
    assert os.stat(so).st_mtime_ns == before, "dropout/cpu.cpp was rebuilt after other kernels loaded first"


def test_a_kernel_is_rebuilt_when_a_shared_header_changes(tmp_path):
    """torch's JIT rebuild check sees a kernel's .cpp only: the build name must change with the headers
    it includes (kernels/cpu_math.h), or an edited header would keep running the old build."""
    from neurograph.kernels.cpu_extension import build_name

    source, header = tmp_path / "k_cpu.cpp", tmp_path / "cpu_math.h"
    source.write_text('#include "cpu_math.h"\n')
    header.write_text("inline float f(float x) { return x; }\n")
    first = build_name(source, tmp_path)
    assert build_name(source, tmp_path) == first
    header.write_text("inline float f(float x) { return 2 * x; }\n")
    assert build_name(source, tmp_path) != first


def test_stale_build_locks_are_removed_and_held_ones_kept(tmp_path, monkeypatch):
    """torch's build lock of a killed build (old, held by no process) goes; one a live process holds
    open, as torch's FileBaton does for the whole build, stays; so does one just taken."""
    import subprocess
    import sys
    import time

    from neurograph.kernels.cpu_extension import STALE_LOCK_AGE_S, clear_stale_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    killed, building, fresh = (tmp_path / name / "lock" for name in ("killed", "building", "fresh"))
    for lock in (killed, building, fresh):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - 2 * STALE_LOCK_AGE_S
    for lock in (killed, building):
        os.utime(lock, (old, old))
    holder = subprocess.Popen([sys.executable, "-c", f"import os, sys, time; fd = os.open({str(building)!r}, os.O_RDONLY); "
                               "print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()  # the lock is open
        with pytest.warns(RuntimeWarning, match="stale build lock"):
            assert clear_stale_build_locks() == [killed]
    finally:
        holder.kill()
        holder.communicate()
    assert not killed.exists() and building.exists() and fresh.exists()
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert clear_stale_build_locks() == [building]  # its holder is gone now
