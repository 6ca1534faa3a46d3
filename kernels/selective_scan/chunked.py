"""The selective scan in chunks, in PyTorch (impl "chunked"; the CPU path where the C++ scan does not build).

T is cut into chunks; a pass over the chunk length (all chunks in parallel) gives each chunk's local
end state, a short scan across chunks gives every chunk's true start state, and a second pass produces
y. Channels are processed in tiles (`_channel_tiles`): on CPU every per-step tensor [B, chunks,
d_tile, S] stays cache-sized; on CUDA, where every op is a kernel launch, tiles are as wide as a memory
budget allows. The [B, T, d, S] state is never held for the whole sequence. `ChunkedSelectiveScan`
(autograd.Function) saves only the chunk-start states and recomputes inside chunks in backward, where
the gradient is the mirror-image reverse scan. The chunk length is picked from the shapes
(`auto_chunk_size`): large batches take the longest chunks, small ones more.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .checks import scan_inputs
from .reference import finish, prepare_delta, selective_scan_ref

# Elements of one per-step state tensor [B, chunks, d_tile, S]: small enough that a step's handful of
# temporaries stays in a core's L2 cache.
_STEP_ELEMENTS = 1 << 16
_MAX_CHUNK = 64
# On CUDA: elements of one tile's whole-chunk tensors [L, B, chunks, d_tile, S] (1 GiB in fp32). The
# CPU's cache-sized tiles cut bench/kernels.py's 256 x 512 x 512 scan into 256 tiles of 2 channels,
# ~2 x 10^5 small kernels forward + backward (4.3 s on an H200, BENCHMARKS.md); this budget makes 4.
_CUDA_TILE_ELEMENTS = 1 << 28

# The internal layout puts the position inside the chunk first, so every per-step slice is one
# contiguous block:  x = delta * u, delta: [L, B, nc, d];  B, C: [L, B, nc, S];  states: [B, nc, d, S]


def _to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, T, F] -> [L, B, nc, F], zero-padded at the end (delta = 0 there: state unchanged)."""
    b, t, f = x.shape
    nc = -(-t // chunk)
    if nc * chunk != t:
        x = F.pad(x, (0, 0, 0, nc * chunk - t))
    return x.reshape(b, nc, chunk, f).permute(2, 0, 1, 3).contiguous()


def _from_chunks(x: torch.Tensor, t: int) -> torch.Tensor:
    """[L, B, nc, F] -> [B, T, F] (padding dropped)."""
    L, b, nc, f = x.shape
    return x.permute(1, 2, 0, 3).reshape(b, nc * L, f)[:, :t]


def auto_chunk_size(b: int, t: int, d: int, s: int) -> int:
    """Chunk length when none is given: as few chunks as fill a cache-sized step tensor
    (chunks only add work: a pass for local end states, one for gradients to chunk starts),
    and chunks of at most `_MAX_CHUNK` steps so backward's recomputed states stay bounded."""
    nc = max(-(-_STEP_ELEMENTS // max(1, b * d * s)), -(-t // _MAX_CHUNK))
    nc = min(nc, max(1, t // 16))
    return -(-t // nc)


def _channel_tiles(b: int, nc: int, d: int, s: int, chunk: int, device: torch.device):
    """Channel ranges processed together: on CPU, each per-step state [B, nc, d_tile, S] stays
    cache-sized; on CUDA, the tile's whole-chunk tensors [L, B, nc, d_tile, S] stay within
    `_CUDA_TILE_ELEMENTS`."""
    budget, per_channel = ((_CUDA_TILE_ELEMENTS, chunk * b * nc * s) if device.type == "cuda"
                           else (_STEP_ELEMENTS, b * nc * s))
    tile = max(1, min(d, budget // max(1, per_channel)))
    return [(i, min(d, i + tile)) for i in range(0, d, tile)]


def _chunk_forward(x, delta, A, B, C):
    """One channel tile. x, delta [L, B, nc, dt]; A [dt, S]; B, C [L, B, nc, S].
    Returns y [L, B, nc, dt], every chunk's start state [B, nc, dt, S] and the final state.
    Loops run over the chunk length with all chunks in parallel; every per-step tensor is
    [B, nc, dt, S], sized to stay in cache."""
    L, nc = x.shape[0], x.shape[2]
    decay = torch.exp(delta[..., None] * A)  # [L, B, nc, dt, S]
    xB = x[..., None] * B[..., None, :]
    starts = torch.zeros_like(decay[0])
    if nc > 1:
        # Pass 1: end state of every chunk but the last when started from zero.
        h = torch.zeros_like(starts[:, 1:])
        for l in range(L):
            h = torch.addcmul(xB[l, :, :-1], decay[l, :, :-1], h)
        chunk_decay = torch.exp(delta[:, :, :-1].sum(0)[..., None] * A)  # [B, nc-1, dt, S]
        # Short scan across chunks: true start state of every chunk.
        for c in range(1, nc):
            torch.addcmul(h[:, c - 1], chunk_decay[:, c - 1], starts[:, c - 1], out=starts[:, c])
    # Pass 2: states from the true starts, and the outputs; the last chunk ends in the final state.
    y = torch.empty_like(x)
    h = starts
    for l in range(L):
        h = torch.addcmul(xB[l], decay[l], h)
        torch.sum(h * C[l, ..., None, :], -1, out=y[l])
    return y, starts, h[:, -1]


def _chunk_backward(x, delta, A, B, C, starts, gy, glast):
    """Gradients for one channel tile (see `_chunk_forward` for shapes). Returns
    (gx, gdelta, gA, gB, gC); gB and gC are this tile's share of the sums over channels."""
    L, nc = x.shape[0], x.shape[2]
    Bx, Cx = B[..., None, :], C[..., None, :]  # [L, B, nc, 1, S]
    decay = torch.exp(delta[..., None] * A)  # [L, B, nc, dt, S]
    # Recompute the states inside the chunks from the saved chunk-start states.
    hs = x.new_empty((L + 1,) + starts.shape)  # slot 0: start state
    hs[0] = starts
    for l in range(L):
        torch.addcmul(x[l, ..., None] * Bx[l], decay[l], hs[l], out=hs[l + 1])
    # Gradient w.r.t. each chunk's end state. The end of chunk c is the start of chunk c+1, so
    # it receives what chunk c+1's outputs send back to its start (a reverse pass from zero
    # over chunks 1..nc-1), plus what later chunks send through chunk c+1's total decay.
    carry = torch.empty_like(starts)
    g = glast.to(x.dtype) if glast is not None else torch.zeros_like(starts[:, 0])
    carry[:, -1] = g
    if nc > 1:
        r = torch.zeros_like(starts[:, 1:])
        for l in range(L - 1, -1, -1):
            r = decay[l, :, 1:] * torch.addcmul(r, Cx[l, :, 1:], gy[l, :, 1:, :, None])
        chunk_decay = torch.exp(delta[:, :, 1:].sum(0)[..., None] * A)  # [B, nc-1, dt, S]
        for c in range(nc - 2, -1, -1):
            g = torch.addcmul(r[:, c], chunk_decay[:, c], g)
            carry[:, c] = g
    gx, gdelta = torch.empty_like(x), torch.empty_like(delta)
    gB, gC = torch.empty_like(B), torch.empty_like(C)
    gA_acc = torch.zeros_like(starts)
    for l in range(L - 1, -1, -1):
        r = torch.addcmul(carry, Cx[l], gy[l, ..., None])  # dLoss/dh_l  [B, nc, dt, S]
        q = r * decay[l]
        q *= hs[l]  # dLoss/d(log decay_l) = r * decay * h_{l-1}
        torch.sum(r * Bx[l], -1, out=gx[l])
        torch.sum(q * A, -1, out=gdelta[l])
        gA_acc.addcmul_(q, delta[l, ..., None])
        torch.matmul(x[l, ..., None, :], r, out=gB[l, ..., None, :])
        torch.matmul(gy[l, ..., None, :], hs[l + 1], out=gC[l, ..., None, :])
        carry = decay[l] * r
    return gx, gdelta, gA_acc.sum((0, 1)), gB, gC


class ChunkedSelectiveScan(torch.autograd.Function):
    """Core SSM scan y_t = <h_t, C_t> in time-major layout, memory-lean in backward.

    Inputs: u, delta [B, T, d] (delta already positive); A [d, S]; B, C [B, T, S].
    Outputs: y [B, T, d], last state [B, d, S]. Saves the inputs and the chunk-start states
    [B, ceil(T/L), d, S] only; states inside chunks are recomputed in backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size: Optional[int]):
        b, t, d = u.shape
        s = A.shape[1]
        L = max(1, min(chunk_size or auto_chunk_size(b, t, d, s), t))
        xc, dc = _to_chunks(delta * u, L), _to_chunks(delta, L)
        Bc, Cc = _to_chunks(B, L), _to_chunks(C, L)
        nc = xc.shape[2]
        starts = u.new_empty(b, nc, d, s)
        y = torch.empty_like(xc)
        last = u.new_empty(b, d, s)
        for lo, hi in _channel_tiles(b, nc, d, s, L, u.device):
            y[..., lo:hi], starts[:, :, lo:hi], last[:, lo:hi] = _chunk_forward(
                xc[..., lo:hi].contiguous(), dc[..., lo:hi].contiguous(), A[lo:hi], Bc, Cc)
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.chunk = L
        return _from_chunks(y, t), last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, starts = ctx.saved_tensors
        L = ctx.chunk
        b, t, d = u.shape
        s = A.shape[1]
        xc, dc = _to_chunks(delta * u, L), _to_chunks(delta, L)
        Bc, Cc = _to_chunks(B, L), _to_chunks(C, L)
        gyc = _to_chunks(gy, L)
        nc = xc.shape[2]
        gx, gdc = torch.empty_like(xc), torch.empty_like(dc)
        gA = torch.empty_like(A)
        gB, gC = torch.zeros_like(Bc), torch.zeros_like(Cc)
        for lo, hi in _channel_tiles(b, nc, d, s, L, u.device):
            tx, td, gA[lo:hi], tB, tC = _chunk_backward(
                xc[..., lo:hi].contiguous(), dc[..., lo:hi].contiguous(), A[lo:hi], Bc, Cc,
                starts[:, :, lo:hi].contiguous(), gyc[..., lo:hi].contiguous(),
                glast[:, lo:hi] if glast is not None else None)
            gx[..., lo:hi], gdc[..., lo:hi] = tx, td
            gB += tB
            gC += tC
        gx, gd = _from_chunks(gx, t), _from_chunks(gdc, t)
        # x = delta * u
        return gx * delta, gd + gx * u, gA, _from_chunks(gB, t), _from_chunks(gC, t), None


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, chunk_size: Optional[int] = None):
    """Chunked scan in mamba-ssm's layout (see the module docstring)."""
    if u.dim() == 3 and u.shape[2] == 0:  # nothing to scan: the reference's empty result
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dt = prepare_delta(delta, delta_bias, delta_softplus)  # [B, d, T]
    y, last = ChunkedSelectiveScan.apply(
        u.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), chunk_size)
    y = finish(y.transpose(1, 2), u, D, z, dtype)
    return (y, last) if return_last_state else y
