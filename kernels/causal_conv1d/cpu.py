"""Causal depthwise conv1d + SiLU on CPU (impl "cpp"): cpu.cpp, one pass forward and two backward (the
pre-activation is recomputed, not stored); float32/float64 CPU tensors."""
from __future__ import annotations

import torch

from ..cpu_extension import load_cpu_extension

SOURCE = "causal_conv1d/cpu.cpp"


class CppCausalConv1dSiLU(torch.autograd.Function):
    """x [M, T, d] (channel stride 1), weight [G, K, d] contiguous, bias [G, d] or None -> [M, T, d]."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return load_cpu_extension(SOURCE).forward(x, weight, bias)

    @staticmethod
    def backward(ctx, gout):
        x, weight, bias = ctx.saved_tensors
        gx, gw, gb = load_cpu_extension(SOURCE).backward(x, weight, bias, gout.contiguous())
        return gx, gw, gb if bias is not None else None
