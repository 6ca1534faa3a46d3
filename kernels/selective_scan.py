"""Selective scan: the Mamba-1 SSM recurrence, its reference, its CPU fast path and one dispatch.

Per channel c and state index s, with delta = softplus(delta + delta_bias) when asked:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <h_t, C_t> + D * u_t,      out_t = y_t * silu(z_t)   (when z is given)

Layout (mamba-ssm's, so the CUDA kernel is a drop-in): u, delta, z [B, d, T]; A [d, S];
B, C [B, S, T]; D, delta_bias [d]. Returns y [B, d, T] and, with `return_last_state`, the
final state h_T [B, d, S] (fp32, fp64 for fp64 inputs) used to start recurrent decoding.

Implementations (`selective_scan(..., impl=...)` is the single dispatch models call):
- "sequential": `selective_scan_ref`, a plain loop over T, differentiable through autograd.
  It and mamba-ssm's published reference (`selective_scan_materialised`, not a dispatch
  choice) are what every other path is tested against.
- "chunked": the pure-PyTorch path. T is cut into chunks; a pass over the chunk length (all
  chunks in parallel) gives each chunk's local end state, a short scan across chunks gives
  every chunk's true start state, and a second pass produces y. Channels are processed in
  tiles (`_channel_tiles`): on CPU every per-step tensor [B, chunks, d_tile, S] stays
  cache-sized; on CUDA, where every op is a kernel launch, tiles are as wide as a memory budget
  allows. The [B, T, d, S] state is never held for the whole sequence. `ChunkedSelectiveScan`
  (autograd.Function) saves only the chunk-start states and recomputes inside chunks in
  backward, where the gradient is the mirror-image reverse scan. The chunk length is picked
  from the shapes (`auto_chunk_size`): large batches take the longest chunks, small ones more.
- "cpp": the CPU default. The whole scan (delta softplus, recurrence, skip term, gate) as one
  fused C++ loop per block of channels, channels in the vector lanes, sequences split across
  threads, with the same memory plan (states kept at chunk starts only, recomputed chunk by
  chunk in backward). kernels/selective_scan_cpu.cpp, built on first use with
  torch.utils.cpp_extension (a C++ compiler and ninja; ~40 s once, then cached). "auto"
  falls back to "chunked" with a warning where it cannot be built.
- "cuda": mamba-ssm's `selective_scan_fn`, used by "auto" only when mamba-ssm imports and
  the tensors are on a CUDA device (the `gpu` extra).
- "triton": the same fused scan as Triton kernels (kernels/selective_scan_triton.py), forward and
  backward; each chunk of 16 steps is one register tile scanned along time with
  `tl.associative_scan` (backward: recomputed from the saved chunk-start state, then a reverse
  scan; no scratch memory). "auto" takes it on CUDA when
  mamba-ssm is absent; on CPU tensors it runs only under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .cpu_extension import cpu_extension_available, load_cpu_extension
from .dispatch import triton_available

# Elements of one per-step state tensor [B, chunks, d_tile, S] in the chunked path: small
# enough that a step's handful of temporaries stays in a core's L2 cache.
_STEP_ELEMENTS = 1 << 16
_MAX_CHUNK = 64
# On CUDA: elements of one tile's whole-chunk tensors [L, B, chunks, d_tile, S] (1 GiB in fp32). The
# CPU's cache-sized tiles cut bench/kernels.py's 256 x 512 x 512 scan into 256 tiles of 2 channels,
# ~2 x 10^5 small kernels forward + backward (4.3 s on an H200, BENCHMARKS.md); this budget makes 4.
_CUDA_TILE_ELEMENTS = 1 << 28

try:  # the CUDA fast path (gpu extra); absent on CPU machines
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan  # type: ignore
except Exception:  # ImportError, or the package imports but its CUDA extension does not
    _mamba_ssm_scan = None

IMPLEMENTATIONS = ("auto", "sequential", "chunked", "cpp", "cuda", "triton")


_SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> torch.dtype:
    """Validate the arguments of every backend before any kernel runs: u, delta, z [Bz, d, T];
    A [d, S]; B, C [Bz, S, T]; D, delta_bias [d] (mamba-ssm's layout; D, z, delta_bias optional);
    floating point, on u's device, any strides (each backend builds the layout its kernel reads).
    Raises ValueError naming the argument and the shape expected. Returns the compute dtype:
    float64 when any input is float64 (the reference's type promotion), else float32."""
    given = dict(zip(_SCAN_ARGS, (u, delta, A, B, C, D, z, delta_bias)))
    for name, x in given.items():
        if x is not None and not isinstance(x, torch.Tensor):
            raise ValueError(f"selective scan: {name} must be a tensor, got {type(x).__name__}")
    for name in ("u", "delta", "A", "B", "C"):
        if given[name] is None:
            raise ValueError(f"selective scan: {name} is required")
    if u.dim() != 3:
        raise ValueError(f"selective scan: u must be [Bz, d, T] (3 dimensions), got shape {list(u.shape)}")
    bz, d, t = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective scan: A must be [d, S] with d = {d} (u's channels), got shape {list(A.shape)}")
    s = A.shape[1]
    expected = dict(u=(bz, d, t), delta=(bz, d, t), A=(d, s), B=(bz, s, t), C=(bz, s, t), D=(d,), z=(bz, d, t),
                    delta_bias=(d,))
    layout = dict(u="[Bz, d, T]", delta="[Bz, d, T]", A="[d, S]", B="[Bz, S, T]", C="[Bz, S, T]", D="[d]",
                  z="[Bz, d, T]", delta_bias="[d]")
    for name, x in given.items():
        if x is None:
            continue
        if tuple(x.shape) != expected[name]:
            raise ValueError(f"selective scan: {name} must be {layout[name]} = {list(expected[name])} "
                             f"(Bz, d, T from u, S from A), got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"selective scan: {name} must be floating point, got {x.dtype}")
        if x.device != u.device:
            raise ValueError(f"selective scan: {name} is on {x.device}, u on {u.device}")
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in given.values()) else torch.float32


def _scan_inputs(*args: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """(u, delta, A, B, C, D, z, delta_bias) checked and cast to the compute dtype."""
    dtype = check_scan_inputs(*args)
    return [None if x is None else x.to(dtype) for x in args]


def _prepare_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y: torch.Tensor, u: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
            dtype: torch.dtype) -> torch.Tensor:
    """Skip term and gate, shared by the PyTorch paths: y [B, d, T] in compute dtype -> output dtype."""
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y.to(dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Sequential reference: one step of the recurrence per time step, in fp32 (fp64 when any
    input is fp64); the output has u's dtype. T = 0 gives an empty y and a zero last state."""
    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    delta = _prepare_delta(delta, delta_bias, delta_softplus)  # [B, d, T]
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # [B, d, S]
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # [B, d, S]
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum("bds,bs->bd", h, C[:, :, t]))
    y = _finish(torch.stack(ys, dim=2) if ys else u[:, :, :0] * 0, u, D, z, dtype)
    return (y, h) if return_last_state else y



def selective_scan_materialised(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                return_last_state=False):
    """mamba-ssm's published `selective_scan_ref` (mamba_ssm/ops/selective_scan_interface.py) for
    real A and per-step B, C, in the inputs' dtype: exp(delta * A) and delta * B * u [B, d, T, S]
    are materialised for the whole sequence, then the states are summed step by step. Written
    apart from `selective_scan_ref` on purpose: it is the tests' independent oracle and the "as
    published" baseline of bench/inn.py."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y

# ----------------------------------------------------------------------------------------
# Chunked scan (CPU default). Internal layout puts the position inside the chunk first so
# every per-step slice is one contiguous block:
#   x = delta * u, delta: [L, B, nc, d];  B, C: [L, B, nc, S];  states: [B, nc, d, S]
# ----------------------------------------------------------------------------------------

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
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dt = _prepare_delta(delta, delta_bias, delta_softplus)  # [B, d, T]
    y, last = ChunkedSelectiveScan.apply(
        u.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), chunk_size)
    y = _finish(y.transpose(1, 2), u, D, z, dtype)
    return (y, last) if return_last_state else y


def _cpp_extension():
    return load_cpu_extension("selective_scan_cpu.cpp")


def cpp_scan_available() -> bool:
    """True when the fused C++ scan builds here (else "auto" takes the PyTorch chunked scan)."""
    return cpu_extension_available("selective_scan_cpu.cpp")


def cpp_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int = 0):
    """One call of the fused C++ forward in its time-major layout (see `CppSelectiveScan`; chunk 0:
    the default): (y [B, T, d], chunk-start states [B, ceil(T/chunk), S, d], last state [B, d, S])."""
    return _cpp_extension().forward(u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus,
                                    chunk or _MAX_CHUNK)


def cpp_scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int, starts, gy,
                      glast=None, with_output: bool = False):
    """The fused C++ backward from `cpp_scan_forward`'s chunk-start states (the same chunk): (gu, gdelta,
    gz, gA, gD, gdelta_bias, gB, gC, y), y the forward's output when `with_output` (else None), at no extra pass."""
    *grads, y = _cpp_extension().backward(
        u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus, chunk or _MAX_CHUNK, starts,
        gy.contiguous(), None if glast is None else glast.contiguous(), with_output)
    return (*grads, y if with_output else None)


class CppSelectiveScan(torch.autograd.Function):
    """The whole scan in the fused C++ kernel: delta bias and softplus, the recurrence, the skip
    term D and the silu(z) gate. Time-major layout: u, delta, z [B, T, d] with contiguous
    channels (any other strides); A [d, S]; B, C [B, T, S]; D, delta_bias [d]. Returns
    y [B, T, d] and the last state [B, d, S]. Saves the inputs and the chunk-start states only."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk_size: Optional[int]):
        chunk = chunk_size or _MAX_CHUNK
        B, C = B.contiguous(), C.contiguous()
        y, starts, last = cpp_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        ctx.options = (delta_softplus, chunk)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        gu, gdelta, gz, gA, gD, gbias, gB, gC, _ = cpp_scan_backward(
            u, delta, A, B, C, D, z, delta_bias, *ctx.options, starts, gy, glast)
        return (gu, gdelta, gA, gB, gC, gD if D is not None else None, gz,
                gbias if delta_bias is not None else None, None, None)


def _time_major(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[B, F, T] (mamba-ssm layout) -> [B, T, F] view with channel stride 1 (what the C++ kernel reads)."""
    if x is None:
        return None
    x = x.transpose(1, 2)
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.stride(-1) != 1:  # F = 1: contiguous() keeps any stride on a size-1 axis; 1 is as valid
        x = x.as_strided(x.shape, (*x.stride()[:-1], 1))
    return x


def selective_scan_cpp(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, chunk_size: Optional[int] = None):
    """Fused C++ scan in mamba-ssm's layout (CPU tensors)."""
    if u.dim() == 3 and u.shape[2] == 0:  # nothing to scan: the reference's empty result
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise ValueError(f"selective scan: impl 'cpp' runs on CPU tensors, u is on {u.device}")
    vector = lambda v: None if v is None else v.contiguous()  # noqa: E731
    y, last = CppSelectiveScan.apply(
        _time_major(u), _time_major(delta), vector(A), _time_major(B), _time_major(C), vector(D), _time_major(z),
        vector(delta_bias), delta_softplus, chunk_size)
    y = y.transpose(1, 2).to(dtype)
    return (y, last) if return_last_state else y


def cuda_scan_available() -> bool:
    return _mamba_ssm_scan is not None and torch.cuda.is_available()


def resolve_scan_impl(impl: str, u: torch.Tensor) -> str:
    """The implementation `selective_scan(..., impl)` runs for inputs like `u` ("auto" resolved)."""
    if impl != "auto":
        return impl
    if u.is_cuda:
        return "cuda" if _mamba_ssm_scan is not None else "triton" if triton_available() else "chunked"
    return "cpp" if cpp_scan_available() else "chunked"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, impl: str = "auto", chunk_size: Optional[int] = None):
    """The single dispatch point. impl: auto | sequential | chunked | cpp | cuda | triton. `chunk_size`:
    None or 0 picks it (chunked: from the shapes, `auto_chunk_size`; cpp: 64; triton: 16, its most).
    "auto" takes mamba-ssm's CUDA kernel when it imports and `u` is on a CUDA device, else the
    Triton scan when triton imports; on CPU the fused C++ scan when it builds, else the PyTorch
    chunked scan."""
    impl = resolve_scan_impl(impl, u)
    if impl in ("cuda", "triton"):  # external kernels: validated here, before they run
        check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if impl == "cuda":
        if _mamba_ssm_scan is None:
            raise RuntimeError("impl='cuda' needs mamba-ssm with its CUDA extension (pip install '.[gpu]')")
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if impl == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size)
    if impl == "cpp":
        return selective_scan_cpp(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size)
    if impl == "triton":
        from .selective_scan_triton import selective_scan_triton  # imports triton: only when asked

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size)
    if impl == "sequential":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    raise ValueError(f"unknown selective scan impl {impl!r}; choose from {IMPLEMENTATIONS}")


def selective_scan_flops(batch: int, seq_len: int, d_inner: int, d_state: int, with_d: bool = True,
                         with_z: bool = True) -> int:
    """Forward FLOPs of the scan, counted as mamba-ssm counts them (9 per state element)."""
    flops = 9 * batch * seq_len * d_inner * d_state
    if with_d:
        flops += batch * d_inner * seq_len
    if with_z:
        flops += batch * d_inner * seq_len
    return flops
