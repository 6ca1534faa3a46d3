"""The selective scan's CPU fast path (impl "cpp", the CPU default): kernels/selective_scan/cpu.cpp.

The whole scan (delta softplus, recurrence, skip term, gate) as one fused C++ loop per block of
channels, channels in the vector lanes, sequences split across threads, with the chunked scan's
memory plan (states kept at chunk starts only, recomputed chunk by chunk in backward). Built on first
use with torch.utils.cpp_extension (a C++ compiler and ninja; ~40 s once, then cached).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..cpu_extension import cpu_extension_available, load_cpu_extension
from .checks import scan_inputs
from .reference import selective_scan_ref

_SOURCE = "selective_scan/cpu.cpp"
_CHUNK = 64  # the default chunk: states kept every 64 steps for backward


def _cpp_extension():
    return load_cpu_extension(_SOURCE)


def cpp_scan_available() -> bool:
    """True when the fused C++ scan builds here (else "auto" takes the PyTorch chunked scan)."""
    return cpu_extension_available(_SOURCE)


def cpp_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int = 0):
    """One call of the fused C++ forward in its time-major layout (see `CppSelectiveScan`; chunk 0:
    the default): (y [B, T, d], chunk-start states [B, ceil(T/chunk), S, d], last state [B, d, S])."""
    return _cpp_extension().forward(u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus,
                                    chunk or _CHUNK)


def cpp_scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int, starts, gy,
                      glast=None, with_output: bool = False):
    """The fused C++ backward from `cpp_scan_forward`'s chunk-start states (the same chunk): (gu, gdelta,
    gz, gA, gD, gdelta_bias, gB, gC, y), y the forward's output when `with_output` (else None), at no extra pass."""
    *grads, y = _cpp_extension().backward(
        u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus, chunk or _CHUNK, starts,
        gy.contiguous(), None if glast is None else glast.contiguous(), with_output)
    return (*grads, y if with_output else None)


class CppSelectiveScan(torch.autograd.Function):
    """The whole scan in the fused C++ kernel: delta bias and softplus, the recurrence, the skip
    term D and the silu(z) gate. Time-major layout: u, delta, z [B, T, d] with contiguous
    channels (any other strides); A [d, S]; B, C [B, T, S]; D, delta_bias [d]. Returns
    y [B, T, d] and the last state [B, d, S]. Saves the inputs and the chunk-start states only."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk_size: Optional[int]):
        chunk = chunk_size or _CHUNK
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
    u, delta, A, B, C, D, z, delta_bias = scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise ValueError(f"selective scan: impl 'cpp' runs on CPU tensors, u is on {u.device}")
    vector = lambda v: None if v is None else v.contiguous()  # noqa: E731
    y, last = CppSelectiveScan.apply(
        _time_major(u), _time_major(delta), vector(A), _time_major(B), _time_major(C), vector(D), _time_major(z),
        vector(delta_bias), delta_softplus, chunk_size)
    y = y.transpose(1, 2).to(dtype)
    return (y, last) if return_last_state else y
