"""Causal depthwise conv1d + SiLU, the Mamba block's convolution: the one dispatch.

    out[..., t, c] = silu(bias[c] + sum_k weight[c, k] x[..., t - K + 1 + k, c])   (x = 0 before t = 0)

Layout: x [..., T, d] (channels last, as the block's in_proj writes them); weight [d, K] and bias [d]
shared by every sequence, or [G, d, K] and [G, d] with one kernel per index of x's dim -3 (the
INN's per-neuron kernels, x [B, N, T, d]).

Implementations (`causal_conv1d_silu(..., impl=...)`):
- "reference": reference.py, K shifted multiply-adds in PyTorch, differentiable through autograd.
- "cpp": cpu.py with cpu.cpp, one pass forward and two backward (the pre-activation is recomputed,
  not stored); float32/float64 CPU tensors.
- "auto": "cpp" where it applies and builds, else "reference".
"""
from __future__ import annotations

from typing import Optional

import torch

from ..cpu_extension import cpu_extension_available
from .cpu import SOURCE, CppCausalConv1dSiLU
from .reference import causal_conv1d_silu_ref

IMPLEMENTATIONS = ("auto", "reference", "cpp")
__all__ = ["IMPLEMENTATIONS", "causal_conv1d_silu", "causal_conv1d_silu_ref"]


def _cpp_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
            and (weight.dim() == 2 or (x.dim() >= 3 and x.shape[-3] == weight.shape[0])))


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       impl: str = "auto") -> torch.Tensor:
    """x [..., T, d] -> silu(causal depthwise conv(x)) [..., T, d] (see the module docstring)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown causal conv1d impl {impl!r}; choose from {IMPLEMENTATIONS}")
    if impl == "auto":
        impl = "cpp" if _cpp_applies(x, weight) and cpu_extension_available(SOURCE) else "reference"
    if impl == "reference":
        return causal_conv1d_silu_ref(x, weight, bias)
    if not _cpp_applies(x, weight):
        raise ValueError(f"causal conv1d impl 'cpp' needs float32/float64 CPU tensors of one dtype and a weight "
                         f"[d, K] or [G, d, K] with G = x.shape[-3]; got x {list(x.shape)} {x.dtype} on {x.device}, "
                         f"weight {list(weight.shape)} {weight.dtype}")
    t, d = x.shape[-2:]
    groups = weight.shape[0] if weight.dim() == 3 else 1
    w = weight.reshape(groups, d, -1).transpose(1, 2).contiguous()  # [G, K, d]
    b = None if bias is None else bias.reshape(groups, d)
    x3 = x.reshape(-1, t, d)
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    return CppCausalConv1dSiLU.apply(x3, w, b).view(x.shape)
