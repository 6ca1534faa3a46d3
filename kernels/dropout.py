"""Dropout: PyTorch's, or on CPU a counter-based kernel that stores no mask.

`dropout(x, p, training)` is the one entry point (model/layers.py's `Dropout` module calls it).
On CPU float tensors it runs kernels/dropout_cpu.cpp: element i is kept when a hash of
(seed, i) clears p, the seed drawn from torch's default generator on each call. So results follow
`torch.manual_seed`, activation checkpointing's recomputation (which restores the generator state)
draws the same mask, and backward re-derives the mask from the seed instead of keeping a
[..., D] mask per call. PyTorch's CPU dropout spends most of its time drawing one Mersenne-Twister
number per element on one thread; the hash is a few vector instructions per element.
Elsewhere (CUDA, other dtypes, no C++ compiler) it is `F.dropout`. The two draw different masks
with the same distribution (keep probability 1 - p to within 2^-32, kept values scaled by 1/(1-p)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_extension import cpu_extension_available, load_cpu_extension

_SOURCE = "dropout_cpu.cpp"


class CounterDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float, seed: int):
        ctx.p, ctx.seed = p, seed
        return load_cpu_extension(_SOURCE).apply(x.contiguous(), seed, p)

    @staticmethod
    def backward(ctx, grad):
        return load_cpu_extension(_SOURCE).apply(grad.contiguous(), ctx.seed, ctx.p), None, None


def counter_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """x * mask / (1 - p) with the mask a function of (seed, element index) (CPU float tensors)."""
    return CounterDropout.apply(x, p, seed)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and cpu_extension_available(_SOURCE):
        seed = int(torch.randint(0, 2**62, ()))  # the default generator: reproducible, restored by checkpointing
        return counter_dropout(x, p, seed)
    return F.dropout(x, p, True)
