"""Causal depthwise conv1d + SiLU in PyTorch (impl "reference"): K shifted multiply-adds, differentiable
through autograd."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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
