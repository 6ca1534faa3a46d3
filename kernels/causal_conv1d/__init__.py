"""Causal depthwise conv1d + SiLU, the Mamba block's convolution: the one dispatch.

    out[..., t, c] = silu(bias[c] + sum_k weight[c, k] x[..., t - K + 1 + k, c])   (x = 0 before t = 0)

Layout: x [..., T, d] (channels last, as the block's in_proj writes them); weight [d, K] and bias [d]
shared by every sequence, or [G, d, K] and [G, d] with one kernel per index of x's dim -3 (the
INN's per-neuron kernels, x [B, N, T, d]).

Implementations (`causal_conv1d_silu(..., impl=...)`):
- "reference": reference.py, K shifted multiply-adds in PyTorch, differentiable through autograd
  (on a GPU each tap is a kernel over the whole tensor: ~6 passes forward, ~15 backward).
- "cpp": cpu.py with cpu.cpp, one pass forward and two backward (the pre-activation is recomputed,
  not stored); float32/float64 CPU tensors.
- "cuda": the causal-conv1d package's `causal_conv1d_fn` (the `gpu` extra; Mamba's own CUDA conv):
  CUDA tensors, one weight for all sequences, K from 2 to 4.
- "triton": triton.py, one pass forward and one backward, any K, per-group weights (CUDA, or CPU
  under TRITON_INTERPRET=1).
- "auto": on CPU "cpp" where it applies and builds; on CUDA "cuda" where it applies, else "triton"
  when triton is installed; "reference" otherwise.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..cpu_extension import cpu_extension_available
from ..installed import triton_available
from .cpu import SOURCE, CppCausalConv1dSiLU
from .reference import causal_conv1d_silu_ref

try:  # the `gpu` extra; its import needs the package's CUDA extension
    from causal_conv1d import causal_conv1d_fn as _cuda_conv  # type: ignore
except ImportError:
    _cuda_conv = None

IMPLEMENTATIONS = ("auto", "reference", "cpp", "cuda", "triton")
__all__ = ["IMPLEMENTATIONS", "causal_conv1d_silu", "causal_conv1d_silu_ref", "resolve_conv_impl"]


def _grouped(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A weight [d, K] for every sequence, or [G, d, K] with G = x.shape[-3]."""
    return weight.dim() == 2 or (weight.dim() == 3 and x.dim() >= 3 and x.shape[-3] == weight.shape[0])


def _cpp_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
            and _grouped(x, weight))


def _cuda_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return _cuda_conv is not None and x.is_cuda and weight.dim() == 2 and 2 <= weight.shape[-1] <= 4


def resolve_conv_impl(impl: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """The implementation `causal_conv1d_silu(..., impl)` runs for x and weight ("auto" resolved)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown causal conv1d impl {impl!r}; choose from {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    if x.is_cuda:
        return "cuda" if _cuda_applies(x, weight) else "triton" if triton_available() else "reference"
    return "cpp" if _cpp_applies(x, weight) and cpu_extension_available(SOURCE) else "reference"


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       impl: str = "auto") -> torch.Tensor:
    """x [..., T, d] -> silu(causal depthwise conv(x)) [..., T, d] (see the module docstring)."""
    impl = resolve_conv_impl(impl, x, weight)
    if impl == "reference":
        return causal_conv1d_silu_ref(x, weight, bias)
    t, d = x.shape[-2:]
    x3 = x.reshape(math.prod(x.shape[:-2]), t, d)  # [M, T, d]
    if impl == "cuda":
        if not _cuda_applies(x, weight):
            raise RuntimeError("causal conv1d impl 'cuda' needs the causal-conv1d package (pip install '.[gpu]'), "
                               f"CUDA tensors and a weight [d, K] with K in 2..4; got weight {list(weight.shape)} "
                               f"on {x.device}")
        out = _cuda_conv(x3.transpose(1, 2), weight, bias, activation="silu")  # [M, d, T]
        return out.transpose(1, 2).reshape(x.shape)
    if impl == "cpp" and not _cpp_applies(x, weight):
        raise ValueError(f"causal conv1d impl 'cpp' needs float32/float64 CPU tensors of one dtype and a weight "
                         f"[d, K] or [G, d, K] with G = x.shape[-3]; got x {list(x.shape)} {x.dtype} on {x.device}, "
                         f"weight {list(weight.shape)} {weight.dtype}")
    if impl == "triton" and not _grouped(x, weight):
        raise ValueError(f"causal conv1d impl 'triton' needs a weight [d, K] or [G, d, K] with G = x.shape[-3]; "
                         f"got x {list(x.shape)}, weight {list(weight.shape)}")
    groups = weight.shape[0] if weight.dim() == 3 else 1
    w = weight.reshape(groups, d, -1).transpose(1, 2).contiguous()  # [G, K, d]
    b = None if bias is None else bias.reshape(groups, d)
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    if impl == "triton":
        from .triton import TritonCausalConv1dSiLU

        return TritonCausalConv1dSiLU.apply(x3, w, b).view(x.shape)
    return CppCausalConv1dSiLU.apply(x3, w, b).view(x.shape)
