"""Counter-based dropout on CPU: cpu.cpp keeps element i when a hash of (seed, i) clears p, so backward
re-derives the mask from the seed instead of storing it."""
from __future__ import annotations

import torch

from ..cpu_extension import load_cpu_extension

SOURCE = "dropout/cpu.cpp"


class CounterDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float, seed: int):
        ctx.p, ctx.seed = p, seed
        return load_cpu_extension(SOURCE).apply(x.contiguous(), seed, p)

    @staticmethod
    def backward(ctx, grad):
        return load_cpu_extension(SOURCE).apply(grad.contiguous(), ctx.seed, ctx.p), None, None


def counter_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """x * mask / (1 - p) with the mask a function of (seed, element index) (CPU float tensors)."""
    return CounterDropout.apply(x, p, seed)
