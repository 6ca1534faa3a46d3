"""Causal depthwise conv1d + SiLU, the Mamba block's convolution: reference, CPU fast path, dispatch.

    out[..., t, c] = silu(bias[c] + sum_k weight[c, k] x[..., t - K + 1 + k, c])   (x = 0 before t = 0)

Layout: x [..., T, d] (channels last, as the block's in_proj writes them); weight [d, K] and bias [d]
shared by every sequence, or [G, d, K] and [G, d] with one kernel per index of x's dim -3 (the
INN's per-neuron kernels, x [B, N, T, d]).

Implementations (`causal_conv1d_silu(..., impl=...)`):
- "reference": K shifted multiply-adds in PyTorch, differentiable through autograd.
- "cpp": kernels/causal_conv1d_cpu.cpp, one pass forward and two backward (the pre-activation is
  recomputed, not stored); float32/float64 CPU tensors.
- "auto": "cpp" where it applies and builds, else "reference".
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .cpu_extension import cpu_extension_available, load_cpu_extension

_SOURCE = "causal_conv1d_cpu.cpp"
IMPLEMENTATIONS = ("auto", "reference", "cpp")


def causal_conv1d_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    t, K = x.shape[-2], weight.shape[-1]
    w = weight.transpose(-1, -2)  # [(G,) K, d]
    if w.dim() == 3:
        w = w[:, None]  # [G, 1, K, d] against x [..., G, T, d]
    padded = F.pad(x, (0, 0, K - 1, 0))
    pre = padded[..., K - 1:, :] * w[..., K - 1, :]
    for k in range(K - 1):  # in-place multiply-adds: one pass over [..., T, d] per tap
        pre.addcmul_(padded[..., k:k + t, :], w[..., k, :])
    if bias is not None:
        pre += bias[:, None] if bias.dim() == 2 else bias
    return F.silu(pre)


class CppCausalConv1dSiLU(torch.autograd.Function):
    """x [M, T, d] (channel stride 1), weight [G, K, d] contiguous, bias [G, d] or None -> [M, T, d]."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return load_cpu_extension(_SOURCE).forward(x, weight, bias)

    @staticmethod
    def backward(ctx, gout):
        x, weight, bias = ctx.saved_tensors
        gx, gw, gb = load_cpu_extension(_SOURCE).backward(x, weight, bias, gout.contiguous())
        return gx, gw, gb if bias is not None else None


def _cpp_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
            and (weight.dim() == 2 or (x.dim() >= 3 and x.shape[-3] == weight.shape[0])))


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       impl: str = "auto") -> torch.Tensor:
    """x [..., T, d] -> silu(causal depthwise conv(x)) [..., T, d] (see the module docstring)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown causal conv1d impl {impl!r}; choose from {IMPLEMENTATIONS}")
    if impl == "auto":
        impl = "cpp" if _cpp_applies(x, weight) and cpu_extension_available(_SOURCE) else "reference"
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
