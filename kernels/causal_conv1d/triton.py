"""Causal depthwise conv1d + SiLU in Triton (impl "triton"): one pass forward, one backward. The
reference and the dispatch are reference.py and __init__.py beside it.

Layouts as the C++ kernel's (cpu.cpp): x [M, T, d] with channel stride 1 (any sequence and time
strides: the Mamba block passes a half of in_proj's output), weight [G, K, d] contiguous, bias [G, d]
or None; sequence m uses group m % G. Out and dx are [M, T, d] contiguous in x's dtype.

Forward: one program per (sequence, block of BLOCK_T steps, block of BLOCK_D channels) reads K
shifted tiles of x (the overlap is served from cache: HBM sees x about once) and writes silu(pre).
Backward: the same grid; each program recomputes pre at t .. t + K - 1 (K^2 multiply-adds per element,
from cache), so neither pre nor its gradient crosses HBM, and writes
    dx[t] = sum_j w[K - 1 - j] gpre[t + j],   gpre = dout silu'(pre)
with its share of the weight and bias gradients, sum over its tile of gpre[t] x[t - K + 1 + k] and of
gpre[t], to partials [M, n_T, K + 1, d] (fp32) that the host sums per group: no atomics.
Arithmetic in fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch

from ..triton_runtime import check_triton_device, next_power_of_2, triton

BLOCK_T = 64  # forward; the backward's tiles are half as long (BLOCK_T // 2): its ~5 live tiles, 16 fp32 values
MAX_BLOCK_D = 64  # per thread each, fit ~150 registers without spilling (8 warps on 64-step tiles spilled on sm_80)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _preactivation(x_row, w_g, b_g, t, c, T, D, sx_t, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """pre [BLOCK_T, BLOCK_D] at steps t of one sequence (x_row) and channels c of one group (w_g, b_g)."""
        mc = c < D
        acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for k in tl.static_range(K):
            s = t - (K - 1) + k
            xk = tl.load(x_row + s[:, None] * sx_t + c[None, :], mask=((s >= 0) & (s < T))[:, None] & mc[None, :],
                         other=0.0)
            acc += xk.to(tl.float32) * tl.load(w_g + k * D + c, mask=mc, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_g + c, mask=mc, other=0.0).to(tl.float32)[None, :]
        return acc

    @triton.jit
    def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, T, D, G, sx_m, sx_t, HAS_BIAS: tl.constexpr,
                         K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        m = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        c = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        g = m % G
        pre = _preactivation(x_ptr + m * sx_m, w_ptr + g * K * D, b_ptr + g * D, t, c, T, D, sx_t, HAS_BIAS, K,
                             BLOCK_T, BLOCK_D)
        out = pre * tl.sigmoid(pre)
        tl.store(out_ptr + (m * T + t[:, None]) * D + c[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(t < T)[:, None] & (c < D)[None, :])

    @triton.jit
    def _silu_grad(x_row, w_g, b_g, dout_row, s, c, T, D, sx_t, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """gpre = dout silu'(pre) at steps s, pre recomputed; zero past the end (dout's mask)."""
        pre = _preactivation(x_row, w_g, b_g, s, c, T, D, sx_t, HAS_BIAS, K, BLOCK_T, BLOCK_D)
        sig = tl.sigmoid(pre)
        dout = tl.load(dout_row + s[:, None] * D + c[None, :], mask=(s < T)[:, None] & (c < D)[None, :], other=0.0)
        return dout.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))

    @triton.jit
    def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, dout_ptr, dx_ptr, partial_ptr, T, D, G, sx_m, sx_t,
                         HAS_BIAS: tl.constexpr, K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        m = tl.program_id(0).to(tl.int64)
        tb = tl.program_id(1)
        t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        c = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        mc = c < D
        g = m % G
        x_row, w_g, b_g, dout_row = x_ptr + m * sx_m, w_ptr + g * K * D, b_ptr + g * D, dout_ptr + m * T * D
        gpre = _silu_grad(x_row, w_g, b_g, dout_row, t, c, T, D, sx_t, HAS_BIAS, K, BLOCK_T, BLOCK_D)
        partial = partial_ptr + ((m * tl.num_programs(1) + tb) * (K + 1)) * D + c
        for k in tl.static_range(K):  # this tile's share of the weight and bias gradients
            r = t - (K - 1) + k
            xk = tl.load(x_row + r[:, None] * sx_t + c[None, :], mask=((r >= 0) & (r < T))[:, None] & mc[None, :],
                         other=0.0)
            tl.store(partial + k * D, tl.sum(gpre * xk.to(tl.float32), 0), mask=mc)
        tl.store(partial + K * D, tl.sum(gpre, 0), mask=mc)
        dx = gpre * tl.load(w_g + (K - 1) * D + c, mask=mc, other=0.0).to(tl.float32)[None, :]
        for j in range(1, K):  # gpre at t + j feeds dx[t] through tap K - 1 - j (a loop, not unrolled: registers)
            gpre = _silu_grad(x_row, w_g, b_g, dout_row, t + j, c, T, D, sx_t, HAS_BIAS, K, BLOCK_T, BLOCK_D)
            dx += gpre * tl.load(w_g + (K - 1 - j) * D + c, mask=mc, other=0.0).to(tl.float32)[None, :]
        tl.store(dx_ptr + (m * T + t[:, None]) * D + c[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=(t < T)[:, None] & mc[None, :])


def _grid(x: torch.Tensor, block_t: int) -> tuple[tuple[int, int, int], int]:
    m, t, d = x.shape
    block_d = min(MAX_BLOCK_D, next_power_of_2(d))
    return (m, triton.cdiv(t, block_t), triton.cdiv(d, block_d)), block_d


class TritonCausalConv1dSiLU(torch.autograd.Function):
    """x [M, T, d] (channel stride 1), weight [G, K, d] contiguous, bias [G, d] or None -> [M, T, d]."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        check_triton_device("causal conv1d", _conv_fwd_kernel, x)
        m, t, d = x.shape
        (groups, k, _), has_bias = weight.shape, bias is not None
        out = torch.empty(m, t, d, device=x.device, dtype=x.dtype)
        if out.numel():
            grid, block_d = _grid(x, BLOCK_T)
            _conv_fwd_kernel[grid](x, weight, bias if has_bias else weight, out, t, d, groups, x.stride(0),
                                   x.stride(1), HAS_BIAS=has_bias, K=k, BLOCK_T=BLOCK_T, BLOCK_D=block_d)
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        m, t, d = x.shape
        (groups, k, _), has_bias = weight.shape, bias is not None
        dout = dout.contiguous()
        dx = torch.empty(m, t, d, device=x.device, dtype=x.dtype)
        grid, block_d = _grid(x, BLOCK_T // 2)
        partials = torch.zeros(m, grid[1], k + 1, d, device=x.device, dtype=torch.float32)
        if dx.numel():
            _conv_bwd_kernel[grid](x, weight, bias if has_bias else weight, dout, dx, partials, t, d, groups,
                                   x.stride(0), x.stride(1), HAS_BIAS=has_bias, K=k, BLOCK_T=BLOCK_T // 2,
                                   BLOCK_D=block_d)
        sums = partials.view(m // groups, groups, grid[1], k + 1, d).sum((0, 2))  # [G, K + 1, d]
        dbias = sums[:, k].to(bias.dtype) if has_bias else None
        return dx, sums[:, :k].to(weight.dtype), dbias
