"""Selective scan in Triton: the whole Mamba-1 scan (delta bias and softplus, the recurrence, skip
term D, silu(z) gate) as one forward and one backward kernel. The reference and the dispatch are
kernels/selective_scan.py (impl "triton"); this module holds only the kernels and their
autograd.Function.

One program owns one sequence b and a block of BLOCK_D channels and walks T in order with the
state h [BLOCK_D, S] kept in fp32 registers; inputs may be fp32, fp16 or bf16 (loaded, then
computed in fp32; fp64 inputs are computed in fp32 too, unlike the reference). Forward stores the state at every chunk start ([B, nc, d, S], nc = ceil(T/L))
and the final state. Backward walks the chunks in reverse: it recomputes the chunk's L states
from the saved start into a per-program scratch buffer, then runs the reverse recurrence

    r_t = carry + C_t gy_t;  carry = exp(delta_t A) r_t   (carry: dLoss/dh_t from later steps)

producing du, ddelta, dz per step, per-program partial sums for dA, dD, ddelta_bias, and
per-channel-block partial sums for dB, dC (summed over blocks in PyTorch: no atomics, so
gradients are deterministic).

Layouts are mamba-ssm's with any strides: u, delta, z [B, d, T]; B, C [B, S, T]; A [d, S];
D, delta_bias [d]. The model passes time-major views (channels contiguous): the per-step loads
of a channel block are then contiguous.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .triton_runtime import check_triton_device, next_power_of_2, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                         out_ptr, starts_ptr, last_ptr,
                         T, d, S, n_chunks, chunk,
                         su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sz_b, sz_d, sz_t, so_b, so_d, so_t,
                         sB_b, sB_s, sB_t, sC_b, sC_s, sC_t,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
        s = tl.arange(0, BLOCK_S)  # [BS]
        mch, ms = ch < d, s < S
        m2 = mch[:, None] & ms[None, :]
        A = tl.load(A_ptr + ch[:, None] * S + s[None, :], mask=m2, other=0.0).to(tl.float32)  # [BD, BS]
        Dv = tl.load(D_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
        bias = tl.load(bias_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
        u_row, dl_row = u_ptr + b * su_b + ch * su_d, delta_ptr + b * sdl_b + ch * sdl_d
        z_row, o_row = z_ptr + b * sz_b + ch * sz_d, out_ptr + b * so_b + ch * so_d
        B_row, C_row = B_ptr + b * sB_b + s * sB_s, C_ptr + b * sC_b + s * sC_s
        state = ch[:, None] * S + s[None, :]  # offsets in a [d, S] state
        h = tl.zeros([BLOCK_D, BLOCK_S], tl.float32)
        for c in range(n_chunks):
            tl.store(starts_ptr + (b * n_chunks + c) * d * S + state, h, mask=m2)
            for t in range(c * chunk, tl.minimum(c * chunk + chunk, T)):
                uu = tl.load(u_row + t * su_t, mask=mch, other=0.0).to(tl.float32)
                dl = tl.load(dl_row + t * sdl_t, mask=mch, other=0.0).to(tl.float32) + bias
                if SOFTPLUS:  # log(1 + e^x), stable, accurate for small e^-|x| like torch's
                    e = tl.exp(-tl.abs(dl))
                    dl = tl.maximum(dl, 0.0) + tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
                Bt = tl.load(B_row + t * sB_t, mask=ms, other=0.0).to(tl.float32)
                Ct = tl.load(C_row + t * sC_t, mask=ms, other=0.0).to(tl.float32)
                h = tl.exp(dl[:, None] * A) * h + (dl * uu)[:, None] * Bt[None, :]
                y = tl.sum(h * Ct[None, :], 1) + Dv * uu
                if HAS_Z:
                    zz = tl.load(z_row + t * sz_t, mask=mch, other=0.0).to(tl.float32)
                    y = y * zz * tl.sigmoid(zz)
                tl.store(o_row + t * so_t, y.to(out_ptr.dtype.element_ty), mask=mch)
        tl.store(last_ptr + b * d * S + state, h, mask=m2)

    @triton.jit
    def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, starts_ptr,
                         gout_ptr, glast_ptr, scratch_ptr,
                         gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, gB_ptr, gC_ptr,
                         T, d, S, n_chunks, chunk, n_blocks,
                         su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sz_b, sz_d, sz_t, sg_b, sg_d, sg_t,
                         sB_b, sB_s, sB_t, sC_b, sC_s, sC_t,
                         sgu_b, sgu_d, sgu_t, sgdl_b, sgdl_d, sgdl_t, sgz_b, sgz_d, sgz_t,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, HAS_GLAST: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        ch = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        s = tl.arange(0, BLOCK_S)
        mch, ms = ch < d, s < S
        m2 = mch[:, None] & ms[None, :]
        A = tl.load(A_ptr + ch[:, None] * S + s[None, :], mask=m2, other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
        bias = tl.load(bias_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
        u_row, dl_row = u_ptr + b * su_b + ch * su_d, delta_ptr + b * sdl_b + ch * sdl_d
        z_row, g_row = z_ptr + b * sz_b + ch * sz_d, gout_ptr + b * sg_b + ch * sg_d
        gu_row, gdl_row = gu_ptr + b * sgu_b + ch * sgu_d, gdelta_ptr + b * sgdl_b + ch * sgdl_d
        gz_row = gz_ptr + b * sgz_b + ch * sgz_d
        B_row, C_row = B_ptr + b * sB_b + s * sB_s, C_ptr + b * sC_b + s * sC_s
        gBC_row = ((b * n_blocks + blk) * S + s) * T  # partial dB, dC [B, n_blocks, S, T]
        state = ch[:, None] * S + s[None, :]
        # this program's scratch: chunk + 1 states [BD, BS] (slot 0: the chunk's start state)
        tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_S + s[None, :]
        scratch = scratch_ptr + (b * n_blocks + blk) * (chunk + 1) * BLOCK_D * BLOCK_S + tile
        if HAS_GLAST:
            carry = tl.load(glast_ptr + b * d * S + state, mask=m2, other=0.0).to(tl.float32)
        else:
            carry = tl.zeros([BLOCK_D, BLOCK_S], tl.float32)
        gA = tl.zeros([BLOCK_D, BLOCK_S], tl.float32)
        gD = tl.zeros([BLOCK_D], tl.float32)
        gbias = tl.zeros([BLOCK_D], tl.float32)
        for i in range(n_chunks):
            c = n_chunks - 1 - i
            t0 = c * chunk
            n = tl.minimum(chunk, T - t0)
            # recompute the chunk's states from its saved start
            h = tl.load(starts_ptr + (b * n_chunks + c) * d * S + state, mask=m2, other=0.0)
            tl.store(scratch, h)
            for l in range(n):
                t = t0 + l
                uu = tl.load(u_row + t * su_t, mask=mch, other=0.0).to(tl.float32)
                dl = tl.load(dl_row + t * sdl_t, mask=mch, other=0.0).to(tl.float32) + bias
                if SOFTPLUS:
                    e = tl.exp(-tl.abs(dl))
                    dl = tl.maximum(dl, 0.0) + tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
                Bt = tl.load(B_row + t * sB_t, mask=ms, other=0.0).to(tl.float32)
                h = tl.exp(dl[:, None] * A) * h + (dl * uu)[:, None] * Bt[None, :]
                tl.store(scratch + (l + 1) * BLOCK_D * BLOCK_S, h)
            tl.debug_barrier()
            # reverse recurrence through the chunk
            for j in range(n):
                l = n - 1 - j
                t = t0 + l
                uu = tl.load(u_row + t * su_t, mask=mch, other=0.0).to(tl.float32)
                pre = tl.load(dl_row + t * sdl_t, mask=mch, other=0.0).to(tl.float32) + bias
                dl = pre
                if SOFTPLUS:
                    e = tl.exp(-tl.abs(pre))
                    dl = tl.maximum(pre, 0.0) + tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
                Bt = tl.load(B_row + t * sB_t, mask=ms, other=0.0).to(tl.float32)
                Ct = tl.load(C_row + t * sC_t, mask=ms, other=0.0).to(tl.float32)
                go = tl.load(g_row + t * sg_t, mask=mch, other=0.0).to(tl.float32)
                h_prev = tl.load(scratch + l * BLOCK_D * BLOCK_S)
                h_t = tl.load(scratch + (l + 1) * BLOCK_D * BLOCK_S)
                gy = go
                if HAS_Z:
                    zz = tl.load(z_row + t * sz_t, mask=mch, other=0.0).to(tl.float32)
                    sig = tl.sigmoid(zz)
                    y = tl.sum(h_t * Ct[None, :], 1) + Dv * uu
                    tl.store(gz_row + t * sgz_t, (go * y * sig * (1.0 + zz * (1.0 - sig))).to(gz_ptr.dtype.element_ty),
                             mask=mch)
                    gy = go * zz * sig
                gD += gy * uu
                r = carry + gy[:, None] * Ct[None, :]  # dLoss/dh_t [BD, BS]
                decay = tl.exp(dl[:, None] * A)
                gx = tl.sum(r * Bt[None, :], 1)  # x = delta * u
                tl.store(gB_ptr + gBC_row + t, tl.sum(r * (dl * uu)[:, None], 0), mask=ms)
                tl.store(gC_ptr + gBC_row + t, tl.sum(gy[:, None] * h_t, 0), mask=ms)
                q = r * decay * h_prev  # dLoss/d(delta A)
                gA += q * dl[:, None]
                gdl = tl.sum(q * A, 1) + gx * uu
                if SOFTPLUS:
                    gdl = gdl * tl.sigmoid(pre)
                gbias += gdl
                tl.store(gu_row + t * sgu_t, (gx * dl + gy * Dv).to(gu_ptr.dtype.element_ty), mask=mch)
                tl.store(gdl_row + t * sgdl_t, gdl.to(gdelta_ptr.dtype.element_ty), mask=mch)
                carry = decay * r
            tl.debug_barrier()  # the next chunk reuses the scratch
        tl.store(gA_ptr + b * d * S + state, gA, mask=m2)
        tl.store(gD_ptr + b * d + ch, gD, mask=mch)
        tl.store(gbias_ptr + b * d + ch, gbias, mask=mch)


def default_chunk(t: int) -> int:
    """Chunk length ~ sqrt(T): saved chunk starts (T/L states per sequence) and backward's scratch
    (L + 1 states per program) then cost about the same memory."""
    return max(1, min(t, next_power_of_2(math.isqrt(max(1, t)))))


def _blocks(d: int, s: int) -> tuple[int, int]:
    block_s = next_power_of_2(s)
    return max(1, min(next_power_of_2(d), max(4, 2048 // block_s), 64)), block_s


def _strides(x: Optional[torch.Tensor], like: torch.Tensor) -> tuple[int, int, int]:
    return (x if x is not None else like).stride()


class TritonSelectiveScan(torch.autograd.Function):
    """Fused scan in mamba-ssm's layout (see the module docstring). Returns out [B, d, T] in u's
    dtype and the final state [B, d, S] (fp32). Saves the inputs and the chunk-start states."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk_size: Optional[int]):
        bsz, d, t = u.shape
        s = A.shape[1]
        chunk = max(1, min(chunk_size or default_chunk(t), t))
        n_chunks = -(-t // chunk)
        block_d, block_s = _blocks(d, s)
        A = A.contiguous()
        out = torch.empty_like(u)
        starts = u.new_empty(bsz, n_chunks, d, s, dtype=torch.float32)
        last = u.new_empty(bsz, d, s, dtype=torch.float32)
        check_triton_device("selective_scan", _scan_fwd_kernel, u)
        _scan_fwd_kernel[(bsz, -(-d // block_d))](
            u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
            delta_bias if delta_bias is not None else A, out, starts, last,
            t, d, s, n_chunks, chunk, *u.stride(), *delta.stride(), *_strides(z, u), *out.stride(),
            *B.stride(), *C.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            BLOCK_D=block_d, BLOCK_S=block_s)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        ctx.options = (delta_softplus, chunk)
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        softplus, chunk = ctx.options
        bsz, d, t = u.shape
        s = A.shape[1]
        n_chunks = starts.shape[1]
        block_d, block_s = _blocks(d, s)
        n_blocks = -(-d // block_d)
        f32 = dict(device=u.device, dtype=torch.float32)
        scratch = torch.empty(bsz, n_blocks, chunk + 1, block_d, block_s, **f32)
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gz = torch.empty_like(z) if z is not None else None
        gA, gD, gbias = torch.empty(bsz, d, s, **f32), torch.empty(bsz, d, **f32), torch.empty(bsz, d, **f32)
        gB, gC = torch.empty(bsz, n_blocks, s, t, **f32), torch.empty(bsz, n_blocks, s, t, **f32)
        _scan_bwd_kernel[(bsz, n_blocks)](
            u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
            delta_bias if delta_bias is not None else A, starts, gout,
            glast.contiguous() if glast is not None else starts, scratch,
            gu, gdelta, gz if gz is not None else gu, gA, gD, gbias, gB, gC,
            t, d, s, n_chunks, chunk, n_blocks,
            *u.stride(), *delta.stride(), *_strides(z, u), *gout.stride(), *B.stride(), *C.stride(),
            *gu.stride(), *gdelta.stride(), *_strides(gz, gu),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            HAS_GLAST=glast is not None, BLOCK_D=block_d, BLOCK_S=block_s)
        grad = lambda g, x: None if x is None else g.sum(0).to(x.dtype)  # noqa: E731  partial sums -> x's dtype
        return (gu, gdelta, grad(gA, A), grad(gB.transpose(0, 1), B), grad(gC.transpose(0, 1), C),
                grad(gD, D), gz, grad(gbias, delta_bias), None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, chunk_size: Optional[int] = None):
    """The fused Triton scan in mamba-ssm's layout and calling convention, for inputs that
    kernels/selective_scan.py's dispatch (`selective_scan(..., impl="triton")`) has checked."""
    # the kernels index the small per-channel parameters densely
    A, D, delta_bias = (t.contiguous() if t is not None else None for t in (A, D, delta_bias))
    y, last = TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (y, last) if return_last_state else y
