"""Neuron-graph attention in Triton: M = B x T independent attentions over N neurons, dense
(all N keys of a problem fit one tile, N <= 256) or top-k (each neuron's k keys and values read
through their indices, never gathered into [M, N, k, H, hd] copies). The reference and the
dispatch are reference.py and __init__.py beside it.

Layouts: q, k, v [M, N, H, hd] with any strides in M, N, H (the head dim contiguous); indices
[M, N, k]; outputs o [M, N, H, hd] contiguous and the log-sum-exp of every softmax row
[M, H, N] (dense) or [M, N, H] (top-k), which backward uses to rebuild the probabilities.
Dense: one program per (problem, head, block of queries) in forward; in backward one per
(problem, head), looping over query blocks with dK, dV kept in registers (no atomics). Top-k:
one program per (problem, head, block of queries), an online softmax over the k picks;
backward scatters dK, dV into the picked rows with atomic adds (picks may repeat).

Attention dropout (p > 0) multiplies each softmax probability by `_dropout_scale`: 1 / (1 - p) or
0 from Philox (tl.rand) of a seed and the probability's flat index in [M, H, N, N] (dense) or
[M, N, H, k] (top-k); backward recomputes the same mask from the seed. The kernels do not specialise
on the seed (`do_not_specialize`): every seed runs the same compiled kernel. `attention_dropout_scale`
returns that tensor, so tests can rebuild the kernels' output in PyTorch.
"""
from __future__ import annotations

import math

import torch

from ..triton_runtime import check_triton_device, next_power_of_2, triton

BLOCK_Q = 16
MAX_DENSE_NEURONS = 256  # the dense kernel holds all N keys of a problem in one tile

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _dropout_scale(seed, offsets, dropout_p):
        """1 / (1 - p) where the probability at `offsets` is kept, 0 where dropped."""
        return tl.where(tl.rand(seed, offsets) >= dropout_p, 1.0 / (1.0 - dropout_p), 0.0)

    @triton.jit(do_not_specialize=["seed"])
    def _dropout_scale_kernel(out_ptr, numel, seed, dropout_p, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offsets, _dropout_scale(seed, offsets, dropout_p), mask=offsets < numel)

    @triton.jit(do_not_specialize=["seed"])
    def _dense_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, N, H, HD, scale,
                          sq_m, sq_n, sq_h, sk_m, sk_n, sk_h, sv_m, sv_n, sv_h, seed, dropout_p, DROPOUT: tl.constexpr,
                          BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_HD: tl.constexpr):
        mh = tl.program_id(0)
        m, h = (mh // H).to(tl.int64), mh % H
        qi = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        kj, e = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_HD)
        mq, mk, me = qi < N, kj < N, e < HD
        q = tl.load(q_ptr + m * sq_m + h * sq_h + qi[:, None] * sq_n + e[None, :], mask=mq[:, None] & me[None, :], other=0.0)
        k = tl.load(k_ptr + m * sk_m + h * sk_h + kj[:, None] * sk_n + e[None, :], mask=mk[:, None] & me[None, :], other=0.0)
        v = tl.load(v_ptr + m * sv_m + h * sv_h + kj[:, None] * sv_n + e[None, :], mask=mk[:, None] & me[None, :], other=0.0)
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee") * scale  # [BQ, BN]
        s = tl.where(mk[None, :], s, float("-inf"))
        row_max = tl.max(s, 1)
        p = tl.exp(s - row_max[:, None])
        total = tl.sum(p, 1)
        if DROPOUT:
            p *= _dropout_scale(seed, ((m * H + h) * N + qi[:, None]) * N + kj[None, :], dropout_p)
        o = tl.dot(p, v.to(tl.float32), input_precision="ieee") / total[:, None]
        tl.store(o_ptr + ((m * N + qi[:, None]) * H + h) * HD + e[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=mq[:, None] & me[None, :])
        tl.store(lse_ptr + (m * H + h) * N + qi, row_max + tl.log(total), mask=mq)

    @triton.jit(do_not_specialize=["seed"])
    def _dense_bwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr, N, H, HD, scale,
                          sq_m, sq_n, sq_h, sk_m, sk_n, sk_h, sv_m, sv_n, sv_h, sd_m, sd_n, sd_h,
                          seed, dropout_p, DROPOUT: tl.constexpr,
                          BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_HD: tl.constexpr):
        mh = tl.program_id(0)
        m, h = (mh // H).to(tl.int64), mh % H
        kj, e = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_HD)
        mk, me = kj < N, e < HD
        mkv = mk[:, None] & me[None, :]
        k = tl.load(k_ptr + m * sk_m + h * sk_h + kj[:, None] * sk_n + e[None, :], mask=mkv, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + m * sv_m + h * sv_h + kj[:, None] * sv_n + e[None, :], mask=mkv, other=0.0).to(tl.float32)
        dk = tl.zeros([BLOCK_N, BLOCK_HD], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_HD], tl.float32)
        for q0 in range(0, N, BLOCK_Q):
            qi = q0 + tl.arange(0, BLOCK_Q)
            mq = qi < N
            mqe = mq[:, None] & me[None, :]
            out = ((m * N + qi[:, None]) * H + h) * HD + e[None, :]  # o, dq: [M, N, H, hd] contiguous
            q = tl.load(q_ptr + m * sq_m + h * sq_h + qi[:, None] * sq_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
            do = tl.load(do_ptr + m * sd_m + h * sd_h + qi[:, None] * sd_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
            o = tl.load(o_ptr + out, mask=mqe, other=0.0).to(tl.float32)
            lse = tl.load(lse_ptr + (m * H + h) * N + qi, mask=mq, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            p = tl.where(mq[:, None] & mk[None, :], tl.exp(s - lse[:, None]), 0.0)  # [BQ, BN]
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")  # dLoss/d(p as used)
            p_used = p
            if DROPOUT:
                drop = _dropout_scale(seed, ((m * H + h) * N + qi[:, None]) * N + kj[None, :], dropout_p)
                p_used *= drop
                dp *= drop
            dv += tl.dot(tl.trans(p_used), do, input_precision="ieee")
            ds = p * (dp - tl.sum(do * o, 1)[:, None])
            tl.store(dq_ptr + out, (tl.dot(ds, k, input_precision="ieee") * scale).to(dq_ptr.dtype.element_ty), mask=mqe)
            dk += tl.dot(tl.trans(ds), q, input_precision="ieee") * scale
        rows = ((m * N + kj[:, None]) * H + h) * HD + e[None, :]
        tl.store(dk_ptr + rows, dk.to(dk_ptr.dtype.element_ty), mask=mkv)
        tl.store(dv_ptr + rows, dv.to(dv_ptr.dtype.element_ty), mask=mkv)

    @triton.jit(do_not_specialize=["seed"])
    def _topk_fwd_kernel(q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, lse_ptr, N, H, HD, KK, scale,
                         sq_m, sq_n, sq_h, sk_m, sk_n, sk_h, sv_m, sv_n, sv_h, seed, dropout_p, DROPOUT: tl.constexpr,
                         BLOCK_Q: tl.constexpr, BLOCK_HD: tl.constexpr):
        mh = tl.program_id(0)
        m, h = (mh // H).to(tl.int64), mh % H
        qi = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        e = tl.arange(0, BLOCK_HD)
        mq, me = qi < N, tl.arange(0, BLOCK_HD) < HD
        mqe = mq[:, None] & me[None, :]
        q = tl.load(q_ptr + m * sq_m + h * sq_h + qi[:, None] * sq_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
        row_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_Q], tl.float32)
        acc = tl.zeros([BLOCK_Q, BLOCK_HD], tl.float32)
        for j in range(KK):  # online softmax over the picked keys
            sel = tl.load(idx_ptr + (m * N + qi) * KK + j, mask=mq, other=0).to(tl.int64)
            kj = tl.load(k_ptr + m * sk_m + h * sk_h + sel[:, None] * sk_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
            vj = tl.load(v_ptr + m * sv_m + h * sv_h + sel[:, None] * sv_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
            s = tl.sum(q * kj, 1) * scale
            new_max = tl.maximum(row_max, s)
            rescale, p = tl.exp(row_max - new_max), tl.exp(s - new_max)
            total = total * rescale + p
            if DROPOUT:
                p *= _dropout_scale(seed, ((m * N + qi) * H + h) * KK + j, dropout_p)
            acc = acc * rescale[:, None] + p[:, None] * vj
            row_max = new_max
        tl.store(o_ptr + ((m * N + qi[:, None]) * H + h) * HD + e[None, :], (acc / total[:, None]).to(o_ptr.dtype.element_ty),
                 mask=mqe)
        tl.store(lse_ptr + (m * N + qi) * H + h, row_max + tl.log(total), mask=mq)

    @triton.jit(do_not_specialize=["seed"])
    def _topk_bwd_kernel(q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr, N, H, HD, KK, scale,
                         sq_m, sq_n, sq_h, sk_m, sk_n, sk_h, sv_m, sv_n, sv_h, sd_m, sd_n, sd_h,
                         seed, dropout_p, DROPOUT: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_HD: tl.constexpr):
        mh = tl.program_id(0)
        m, h = (mh // H).to(tl.int64), mh % H
        qi = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        e = tl.arange(0, BLOCK_HD)
        mq, me = qi < N, e < HD
        mqe = mq[:, None] & me[None, :]
        out = ((m * N + qi[:, None]) * H + h) * HD + e[None, :]
        q = tl.load(q_ptr + m * sq_m + h * sq_h + qi[:, None] * sq_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
        do = tl.load(do_ptr + m * sd_m + h * sd_h + qi[:, None] * sd_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
        delta = tl.sum(do * tl.load(o_ptr + out, mask=mqe, other=0.0).to(tl.float32), 1)
        lse = tl.load(lse_ptr + (m * N + qi) * H + h, mask=mq, other=0.0)
        dq = tl.zeros([BLOCK_Q, BLOCK_HD], tl.float32)
        for j in range(KK):
            sel = tl.load(idx_ptr + (m * N + qi) * KK + j, mask=mq, other=0).to(tl.int64)
            kj = tl.load(k_ptr + m * sk_m + h * sk_h + sel[:, None] * sk_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
            vj = tl.load(v_ptr + m * sv_m + h * sv_h + sel[:, None] * sv_n + e[None, :], mask=mqe, other=0.0).to(tl.float32)
            p = tl.exp(tl.sum(q * kj, 1) * scale - lse)
            dp = tl.sum(do * vj, 1)  # dLoss/d(p as used)
            p_used = p
            if DROPOUT:
                drop = _dropout_scale(seed, ((m * N + qi) * H + h) * KK + j, dropout_p)
                p_used *= drop
                dp *= drop
            ds = p * (dp - delta)
            dq += ds[:, None] * kj * scale
            picked = ((m * N + sel[:, None]) * H + h) * HD + e[None, :]
            tl.atomic_add(dk_ptr + picked, ds[:, None] * q * scale, mask=mqe)
            tl.atomic_add(dv_ptr + picked, p_used[:, None] * do, mask=mqe)
        tl.store(dq_ptr + out, dq.to(dq_ptr.dtype.element_ty), mask=mqe)


def _strides(*xs: torch.Tensor) -> list[int]:
    """(m, n, h) strides of each [M, N, H, hd] tensor."""
    return [s for x in xs for s in x.stride()[:3]]


def _head_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def draw_seed() -> int:
    """A dropout seed from torch's default (CPU) generator: torch.manual_seed reproduces it, no device sync."""
    return int(torch.randint(2**31 - 1, ()))


def attention_dropout_scale(seed: int, dropout: float, shape, device) -> torch.Tensor:
    """The factors the kernels multiply into the softmax probabilities for `seed`: 1 / (1 - dropout)
    where kept, 0 where dropped; shape [M, H, N, N] (dense) or [M, N, H, k] (top-k)."""
    out = torch.empty(shape, device=device, dtype=torch.float32)
    check_triton_device("attention_dropout_scale", _dropout_scale_kernel, out)
    _dropout_scale_kernel[(-(-out.numel() // 1024),)](out, out.numel(), seed, dropout, BLOCK=1024)
    return out


def _dropout_args(dropout: float, seed: int) -> dict:
    return dict(seed=seed, dropout_p=dropout, DROPOUT=dropout > 0.0)


class TritonNeuronAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd)) v per (problem, head) over all N neurons: q, k, v [M, N, H, hd] -> [M, N, H, hd];
    with `dropout` > 0 the probabilities are dropped by the mask of `seed` (see attention_dropout_scale)."""

    @staticmethod
    def forward(ctx, q, k, v, dropout: float = 0.0, seed: int = 0):
        q, k, v = (_head_contiguous(x) for x in (q, k, v))
        M, N, H, hd = q.shape
        if N > MAX_DENSE_NEURONS:
            raise ValueError(f"dense Triton neuron attention handles N <= {MAX_DENSE_NEURONS} neurons, got {N}; "
                             "use hierarchical routing (groups) or top-k")
        check_triton_device("neuron_attention", _dense_fwd_kernel, q)
        o = torch.empty(M, N, H, hd, device=q.device, dtype=q.dtype)
        lse = torch.empty(M, H, N, device=q.device, dtype=torch.float32)
        blocks = dict(BLOCK_Q=BLOCK_Q, BLOCK_N=max(16, next_power_of_2(N)), BLOCK_HD=max(16, next_power_of_2(hd)))
        blocks.update(_dropout_args(dropout, seed))
        _dense_fwd_kernel[(M * H, -(-N // BLOCK_Q))](q, k, v, o, lse, N, H, hd, 1.0 / math.sqrt(hd),
                                                     *_strides(q, k, v), **blocks)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.blocks = blocks
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = _head_contiguous(do)
        M, N, H, hd = q.shape
        dq, dk, dv = (torch.empty(M, N, H, hd, device=q.device, dtype=x.dtype) for x in (q, k, v))
        _dense_bwd_kernel[(M * H,)](q, k, v, o, do, lse, dq, dk, dv, N, H, hd, 1.0 / math.sqrt(hd),
                                    *_strides(q, k, v, do), **ctx.blocks, num_warps=8)
        return dq, dk, dv, None, None


class TritonTopKAttention(torch.autograd.Function):
    """Each neuron attends to its picked neurons only: q, k, v [M, N, H, hd], idx [M, N, k] -> [M, N, H, hd];
    dropout as for TritonNeuronAttention."""

    @staticmethod
    def forward(ctx, q, k, v, idx, dropout: float = 0.0, seed: int = 0):
        q, k, v = (_head_contiguous(x) for x in (q, k, v))
        idx = idx.contiguous()
        M, N, H, hd = q.shape
        check_triton_device("topk_neuron_attention", _topk_fwd_kernel, q)
        o = torch.empty(M, N, H, hd, device=q.device, dtype=q.dtype)
        lse = torch.empty(M, N, H, device=q.device, dtype=torch.float32)
        blocks = dict(BLOCK_Q=BLOCK_Q, BLOCK_HD=next_power_of_2(hd), **_dropout_args(dropout, seed))
        _topk_fwd_kernel[(M * H, -(-N // BLOCK_Q))](q, k, v, idx, o, lse, N, H, hd, idx.shape[-1], 1.0 / math.sqrt(hd),
                                                    *_strides(q, k, v), **blocks)
        ctx.save_for_backward(q, k, v, idx, o, lse)
        ctx.blocks = blocks
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, idx, o, lse = ctx.saved_tensors
        do = _head_contiguous(do)
        M, N, H, hd = q.shape
        dq = torch.empty(M, N, H, hd, device=q.device, dtype=torch.float32)
        dk, dv = torch.zeros_like(dq), torch.zeros_like(dq)  # accumulated by atomic adds
        _topk_bwd_kernel[(M * H, -(-N // BLOCK_Q))](q, k, v, idx, o, do, lse, dq, dk, dv, N, H, hd, idx.shape[-1],
                                                    1.0 / math.sqrt(hd), *_strides(q, k, v, do), **ctx.blocks)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None
