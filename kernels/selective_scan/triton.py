"""Selective scan in Triton: the whole Mamba-1 scan (delta bias and softplus, the recurrence, skip
term D, silu(z) gate) as one forward and one backward kernel. The references and the dispatch are
reference.py and __init__.py beside it (impl "triton"); this module holds only the kernels and their
autograd.Function.

One program owns one sequence b and a block of BLOCK_D channels, and walks T in chunks of L steps
(L = `chunk_size`, at most and by default CHUNK = 16; BLOCK_T = L rounded up to a power of two: one
chunk is one time tile). In a chunk every step is computed at once on a [BLOCK_T, BLOCK_D, BLOCK_S]
tile held in registers, in fp32 (at the shipped shapes Triton keeps the tile's time axis inside each
thread, so the scans below run along registers without shuffles):
the recurrence h_t = a_t h_{t-1} + b_t (a_t = exp(delta_t A), b_t = delta_t u_t B_t) is a
first-order linear recurrence, so its states are one `tl.associative_scan` along time of the pairs
(a_t, b_t) under composition, (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2), giving (prod a, h from
zero); adding prod a * h_start gives the states from the chunk's start state, carried between chunks
in registers. Lanes past T (or past L) have a = 1, b = 0: the state passes through, so the tile's last
lane holds the chunk's end state. Inputs may be fp32, fp16 or bf16 (loaded, then computed in fp32;
fp64 inputs are computed in fp32 too, unlike the reference). Forward stores the state at every chunk
start ([B, nc, d, S] fp32, nc = ceil(T/L)) and the final state.

Backward walks the chunks in reverse, all on chip: it recomputes the chunk's states from the saved
start with the same scan, then runs the reverse recurrence

    r_t = C_t gy_t + exp(delta_{t+1} A) r_{t+1}      (r_t = dLoss/dh_t; past the last step the
                                                     factor is 1 and r_T = the final state's gradient)

as a reverse `tl.associative_scan` of the pairs (exp(delta_{t+1} A), C_t gy_t) (delta_{t+1} loaded one
step ahead, so the chunk's last lane reaches the next chunk's first step) plus prod * r of the next
chunk's first step, carried in registers. Then per step: du, ddelta, dz, and dLoss/d(delta A) =
r_t exp(delta_t A) h_{t-1} = r_t (h_t - b_t) (no shifted states needed); per program it sums dA, dD, ddelta_bias over time and dB,
dC over its channels, written as partial sums [B, n_blocks, ...] that PyTorch adds up: no atomics, no
scratch memory, deterministic gradients.

Layouts are mamba-ssm's with any strides: u, delta, z [B, d, T]; B, C [B, S, T]; A [d, S];
D, delta_bias [d]. The model passes time-major views (channels contiguous): a chunk's loads of a
channel block are then BLOCK_T rows of BLOCK_D contiguous elements.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..triton_runtime import check_triton_device, next_power_of_2, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _then(a1, b1, a2, b2):
        """Two steps h -> a h + b composed, (a1, b1) applied first."""
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _load(ptr, t, st, col, sc, mask):
        """A [BLOCK_T, n] tile of a [.., n, T] tensor (time t, column col), in fp32, 0 where masked."""
        return tl.load(ptr + t[:, None] * st + col[None, :] * sc, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _delta(delta_ptr, t, st, ch, sc, mask, bias, SOFTPLUS: tl.constexpr):
        """(delta + bias, delta used by the scan: through softplus when asked, 0 where masked) [BLOCK_T, BLOCK_D]."""
        pre = _load(delta_ptr, t, st, ch, sc, mask) + bias[None, :]
        dl = pre
        if SOFTPLUS:  # log(1 + e^x), stable, accurate for small e^-|x| like torch's
            e = tl.exp(-tl.abs(pre))
            dl = tl.maximum(pre, 0.0) + tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
        return pre, tl.where(mask, dl, 0.0)

    @triton.jit
    def _states(h0, dl, x, A, Bt):
        """The chunk's states h_t [BLOCK_T, BLOCK_D, BLOCK_S] from its start state h0 [BLOCK_D, BLOCK_S],
        and the input terms b_t = x_t B_t (x = delta u)."""
        xb = x[:, :, None] * Bt[:, None, :]
        prod, h = tl.associative_scan((tl.exp(dl[:, :, None] * A[None, :, :]), xb), 0, _then)
        return prod * h0[None, :, :] + h, xb

    @triton.jit
    def _lane(x, lanes, i):
        """x[i] of a tile [BLOCK_T, BLOCK_D, BLOCK_S] (one time lane), as [BLOCK_D, BLOCK_S]."""
        return tl.sum(tl.where((lanes == i)[:, None, None], x, 0.0), 0)

    @triton.jit
    def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                         out_ptr, starts_ptr, last_ptr,
                         T, d, S, n_chunks, chunk,
                         su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sz_b, sz_d, sz_t, so_b, so_d, so_t,
                         sB_b, sB_s, sB_t, sC_b, sC_s, sC_t,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
        s = tl.arange(0, BLOCK_S)  # [BS]
        lanes = tl.arange(0, BLOCK_T)  # [BT]
        mch, ms = ch < d, s < S
        m2 = mch[:, None] & ms[None, :]
        A = tl.load(A_ptr + ch[:, None] * S + s[None, :], mask=m2, other=0.0).to(tl.float32)  # [BD, BS]
        Dv = tl.load(D_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
        bias = tl.load(bias_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
        u_p, dl_p, z_p = u_ptr + b * su_b, delta_ptr + b * sdl_b, z_ptr + b * sz_b
        o_p, B_p, C_p = out_ptr + b * so_b, B_ptr + b * sB_b, C_ptr + b * sC_b
        state = ch[:, None] * S + s[None, :]  # offsets in a [d, S] state
        h = tl.zeros([BLOCK_D, BLOCK_S], tl.float32)
        for c in range(n_chunks):
            tl.store(starts_ptr + (b * n_chunks + c) * d * S + state, h, mask=m2)
            t = c * chunk + lanes
            mt = (lanes < chunk) & (t < T)
            mtd, mts = mt[:, None] & mch[None, :], mt[:, None] & ms[None, :]
            uu = _load(u_p, t, su_t, ch, su_d, mtd)  # [BT, BD]
            _, dl = _delta(dl_p, t, sdl_t, ch, sdl_d, mtd, bias, SOFTPLUS)
            hs, _ = _states(h, dl, dl * uu, A, _load(B_p, t, sB_t, s, sB_s, mts))
            y = tl.sum(hs * _load(C_p, t, sC_t, s, sC_s, mts)[:, None, :], 2) + Dv[None, :] * uu
            if HAS_Z:
                zz = _load(z_p, t, sz_t, ch, sz_d, mtd)
                y = y * zz * tl.sigmoid(zz)
            tl.store(o_p + t[:, None] * so_t + ch[None, :] * so_d, y.to(out_ptr.dtype.element_ty), mask=mtd)
            h = _lane(hs, lanes, BLOCK_T - 1)
        tl.store(last_ptr + b * d * S + state, h, mask=m2)

    @triton.jit
    def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, starts_ptr,
                         gout_ptr, glast_ptr,
                         gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, gB_ptr, gC_ptr,
                         T, d, S, n_chunks, chunk, n_blocks,
                         su_b, su_d, su_t, sdl_b, sdl_d, sdl_t, sz_b, sz_d, sz_t, sg_b, sg_d, sg_t,
                         sB_b, sB_s, sB_t, sC_b, sC_s, sC_t,
                         sgu_b, sgu_d, sgu_t, sgdl_b, sgdl_d, sgdl_t, sgz_b, sgz_d, sgz_t,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, HAS_GLAST: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        ch = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        s = tl.arange(0, BLOCK_S)
        lanes = tl.arange(0, BLOCK_T)
        mch, ms = ch < d, s < S
        m2 = mch[:, None] & ms[None, :]
        A = tl.load(A_ptr + ch[:, None] * S + s[None, :], mask=m2, other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
        bias = tl.load(bias_ptr + ch, mask=mch, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
        u_p, dl_p, z_p, g_p = u_ptr + b * su_b, delta_ptr + b * sdl_b, z_ptr + b * sz_b, gout_ptr + b * sg_b
        B_p, C_p = B_ptr + b * sB_b, C_ptr + b * sC_b
        gu_p, gdl_p, gz_p = gu_ptr + b * sgu_b, gdelta_ptr + b * sgdl_b, gz_ptr + b * sgz_b
        gBC_p = (b * n_blocks + blk) * S * T  # partial dB, dC [B, n_blocks, S, T]
        state = ch[:, None] * S + s[None, :]
        if HAS_GLAST:  # r of the step after the last: dLoss/dh_T
            r_next = tl.load(glast_ptr + b * d * S + state, mask=m2, other=0.0).to(tl.float32)
        else:
            r_next = tl.zeros([BLOCK_D, BLOCK_S], tl.float32)
        gA = tl.zeros([BLOCK_D, BLOCK_S], tl.float32)
        gD = tl.zeros([BLOCK_D], tl.float32)
        gbias = tl.zeros([BLOCK_D], tl.float32)
        for i in range(n_chunks):
            c = n_chunks - 1 - i
            t = c * chunk + lanes
            mt = (lanes < chunk) & (t < T)
            mtd, mts = mt[:, None] & mch[None, :], mt[:, None] & ms[None, :]
            uu = _load(u_p, t, su_t, ch, su_d, mtd)
            _, dl = _delta(dl_p, t, sdl_t, ch, sdl_d, mtd, bias, SOFTPLUS)
            Bt, Ct = _load(B_p, t, sB_t, s, sB_s, mts), _load(C_p, t, sC_t, s, sC_s, mts)
            h0 = tl.load(starts_ptr + (b * n_chunks + c) * d * S + state, mask=m2, other=0.0)
            hs, xb = _states(h0, dl, dl * uu, A, Bt)
            gy = _load(g_p, t, sg_t, ch, sg_d, mtd)
            if HAS_Z:
                zz = _load(z_p, t, sz_t, ch, sz_d, mtd)
                sig = tl.sigmoid(zz)
                y = tl.sum(hs * Ct[:, None, :], 2) + Dv[None, :] * uu
                tl.store(gz_p + t[:, None] * sgz_t + ch[None, :] * sgz_d,
                         (gy * y * sig * (1.0 + zz * (1.0 - sig))).to(gz_ptr.dtype.element_ty), mask=mtd)
                gy = gy * zz * sig
            tl.store(gC_ptr + gBC_p + s[None, :] * T + t[:, None], tl.sum(gy[:, :, None] * hs, 1), mask=mts)
            h_in = hs - xb  # exp(delta_t A) h_{t-1}
            # the decay of the step after each lane (the next chunk's first step for the last lane; 1 past T)
            mnext = mt[:, None] & (t + 1 < T)[:, None] & mch[None, :]
            _, dl_next = _delta(dl_p, t + 1, sdl_t, ch, sdl_d, mnext, bias, SOFTPLUS)
            prod, r = tl.associative_scan((tl.exp(dl_next[:, :, None] * A[None, :, :]), gy[:, :, None] * Ct[:, None, :]),
                                          0, _then, reverse=True)
            r = r + prod * r_next[None, :, :]  # dLoss/dh_t [BT, BD, BS]
            r_next = _lane(r, lanes, 0)
            gx = tl.sum(r * Bt[:, None, :], 2)  # x = delta * u  [BT, BD]
            tl.store(gB_ptr + gBC_p + s[None, :] * T + t[:, None], tl.sum(r * (dl * uu)[:, :, None], 1), mask=mts)
            q = r * h_in  # dLoss/d(delta A)
            gA += tl.sum(q * dl[:, :, None], 0)
            gdl = tl.sum(q * A[None, :, :], 2) + gx * uu
            if SOFTPLUS:  # delta + bias loaded again: cheaper than holding it in registers through the scans
                gdl = gdl * tl.sigmoid(_delta(dl_p, t, sdl_t, ch, sdl_d, mtd, bias, SOFTPLUS)[0])
            gdl = tl.where(mtd, gdl, 0.0)
            gD += tl.sum(gy * uu, 0)
            gbias += tl.sum(gdl, 0)
            tl.store(gu_p + t[:, None] * sgu_t + ch[None, :] * sgu_d,
                     (gx * dl + gy * Dv[None, :]).to(gu_ptr.dtype.element_ty), mask=mtd)
            tl.store(gdl_p + t[:, None] * sgdl_t + ch[None, :] * sgdl_d, gdl.to(gdelta_ptr.dtype.element_ty), mask=mtd)
        tl.store(gA_ptr + b * d * S + state, gA, mask=m2)
        tl.store(gD_ptr + b * d + ch, gD, mask=mch)
        tl.store(gbias_ptr + b * d + ch, gbias, mask=mch)


# One [BLOCK_T, BLOCK_D, BLOCK_S] tile: TILE_ELEMENTS at most, over NUM_WARPS warps, so that the
# backward's live tiles (16 elements a thread each) fit in registers without spilling
# (bench/gpu_resources.py checks it); chunks of CHUNK steps at most (Triton then keeps a tile's time
# axis within each thread: the scans run along registers, and the states saved at chunk starts cost
# S / 4 bytes per channel and step), the channel block filling the rest of the tile, MAX_BLOCK_D
# channels at most (the channel-indexed tensors [BLOCK_T, BLOCK_D] take as many registers as the tiles).
TILE_ELEMENTS = 4096
NUM_WARPS = 8
CHUNK = 16
MAX_BLOCK_D = 64


def _blocks(t: int, d: int, s: int, chunk_size: Optional[int]) -> tuple[int, int, int, int]:
    """(chunk, BLOCK_T, BLOCK_D, BLOCK_S): the chunk length is CHUNK, or `chunk_size` when that is
    shorter; BLOCK_T is it rounded up to a power of two."""
    block_s = next_power_of_2(s)
    block_d = max(1, min(next_power_of_2(d), MAX_BLOCK_D, TILE_ELEMENTS // (CHUNK * block_s)))
    chunk = max(1, min(chunk_size or CHUNK, CHUNK, t))
    return chunk, next_power_of_2(chunk), block_d, block_s


def _strides(x: Optional[torch.Tensor], like: torch.Tensor) -> tuple[int, int, int]:
    return (x if x is not None else like).stride()


class TritonSelectiveScan(torch.autograd.Function):
    """Fused scan in mamba-ssm's layout (see the module docstring). Returns out [B, d, T] in u's
    dtype and the final state [B, d, S] (fp32). Saves the inputs and the chunk-start states."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk_size: Optional[int]):
        bsz, d, t = u.shape
        s = A.shape[1]
        chunk, block_t, block_d, block_s = _blocks(t, d, s, chunk_size)
        n_chunks = -(-t // chunk)
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
            BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_S=block_s, num_warps=NUM_WARPS)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        ctx.options = (delta_softplus, chunk, block_t, block_d, block_s)
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        softplus, chunk, block_t, block_d, block_s = ctx.options
        bsz, d, t = u.shape
        s = A.shape[1]
        n_chunks = starts.shape[1]
        n_blocks = -(-d // block_d)
        f32 = dict(device=u.device, dtype=torch.float32)
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gz = torch.empty_like(z) if z is not None else None
        gA, gD, gbias = torch.empty(bsz, d, s, **f32), torch.empty(bsz, d, **f32), torch.empty(bsz, d, **f32)
        gB, gC = torch.empty(bsz, n_blocks, s, t, **f32), torch.empty(bsz, n_blocks, s, t, **f32)
        _scan_bwd_kernel[(bsz, n_blocks)](
            u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
            delta_bias if delta_bias is not None else A, starts, gout,
            glast.contiguous() if glast is not None else starts,
            gu, gdelta, gz if gz is not None else gu, gA, gD, gbias, gB, gC,
            t, d, s, n_chunks, chunk, n_blocks,
            *u.stride(), *delta.stride(), *_strides(z, u), *gout.stride(), *B.stride(), *C.stride(),
            *gu.stride(), *gdelta.stride(), *_strides(gz, gu),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            HAS_GLAST=glast is not None, BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_S=block_s, num_warps=NUM_WARPS)
        grad = lambda g, x: None if x is None else g.sum(0).to(x.dtype)  # noqa: E731  partial sums -> x's dtype
        return (gu, gdelta, grad(gA, A), grad(gB.transpose(0, 1), B), grad(gC.transpose(0, 1), C),
                grad(gD, D), gz, grad(gbias, delta_bias), None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, chunk_size: Optional[int] = None):
    """The fused Triton scan in mamba-ssm's layout and calling convention, for inputs that
    the dispatch (`selective_scan(..., impl="triton")`) has checked."""
    # the kernels index the small per-channel parameters densely
    A, D, delta_bias = (t.contiguous() if t is not None else None for t in (A, D, delta_bias))
    y, last = TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (y, last) if return_last_state else y
