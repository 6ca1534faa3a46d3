"""Dropout: PyTorch's, or on CPU a counter-based kernel that stores no mask.

`dropout(x, p, training)` is the one entry point (model/layers.py's `Dropout` module calls it).
On CPU float tensors it runs cpu.py with cpu.cpp: element i is kept when a hash of
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

from ..cpu_extension import cpu_extension_available
from .cpu import SOURCE, counter_dropout

__all__ = ["counter_dropout", "dropout"]


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and cpu_extension_available(SOURCE):
        seed = int(torch.randint(0, 2**62, ()))  # the default generator: reproducible, restored by checkpointing
        return counter_dropout(x, p, seed)
    return F.dropout(x, p, True)
