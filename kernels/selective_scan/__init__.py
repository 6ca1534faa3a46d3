"""Selective scan: the Mamba-1 SSM recurrence, and the one dispatch models call.

Per channel c and state index s, with delta = softplus(delta + delta_bias) when asked:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <h_t, C_t> + D * u_t,      out_t = y_t * silu(z_t)   (when z is given)

Layout (mamba-ssm's, so the CUDA kernel is a drop-in): u, delta, z [B, d, T]; A [d, S];
B, C [B, S, T]; D, delta_bias [d]. Returns y [B, d, T] and, with `return_last_state`, the
final state h_T [B, d, S] (fp32, fp64 for fp64 inputs) used to start recurrent decoding.

Implementations (`selective_scan(..., impl=...)`), one module each in this folder:
- "sequential": reference.py's `selective_scan_ref`, a plain loop over T, differentiable through
  autograd; with mamba-ssm's published reference (`selective_scan_materialised`) it is what every
  other path is tested against.
- "chunked": chunked.py, the pure-PyTorch scan in chunks with chunk-start states saved for backward.
- "cpp": cpu.py with cpu.cpp, the fused C++ scan; the CPU default. "auto" falls back to "chunked"
  with a warning where it cannot be built.
- "cuda": mamba-ssm's `selective_scan_fn`, used by "auto" only when mamba-ssm imports and
  the tensors are on a CUDA device (the `gpu` extra).
- "triton": triton.py, the fused scan as Triton kernels, forward and backward; each chunk of 16 steps
  is one register tile scanned along time with `tl.associative_scan` (backward: recomputed from the
  saved chunk-start state, then a reverse scan; no scratch memory). "auto" takes it on CUDA when
  mamba-ssm is absent; on CPU tensors it runs only under TRITON_INTERPRET=1 (tests).
checks.py validates the inputs of every path.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..installed import triton_available
from .checks import check_scan_inputs
from .chunked import auto_chunk_size, selective_scan_chunked
from .cpu import cpp_scan_available, cpp_scan_backward, cpp_scan_forward, selective_scan_cpp
from .reference import selective_scan_materialised, selective_scan_ref

try:  # the CUDA fast path (gpu extra); absent on CPU machines
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan  # type: ignore
except Exception:  # ImportError, or the package imports but its CUDA extension does not
    _mamba_ssm_scan = None

IMPLEMENTATIONS = ("auto", "sequential", "chunked", "cpp", "cuda", "triton")
__all__ = ["IMPLEMENTATIONS", "auto_chunk_size", "check_scan_inputs", "cpp_scan_available", "cpp_scan_backward",
           "cpp_scan_forward", "cuda_scan_available", "resolve_scan_impl", "selective_scan", "selective_scan_chunked",
           "selective_scan_cpp", "selective_scan_flops", "selective_scan_materialised", "selective_scan_ref"]


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
        from .triton import selective_scan_triton  # imports triton: only when asked

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
