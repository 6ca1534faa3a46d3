"""Attention across the neuron axis in PyTorch, dense and top-k: the references, and the CPU path.

q, k, v [M, N, H, hd] for M = B x T independent problems of N neurons."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..dropout import dropout as apply_dropout


def neuron_attention_reference(q, k, v, dropout: float = 0.0) -> torch.Tensor:
    """q, k, v [M, N, H, hd] -> [M, N, H, hd], dense over the N neurons: fused
    scaled_dot_product_attention, with its own dropout on CUDA (inside the fused kernels). On CPU,
    dropout spells the weights [M, H, N, N] out and drops them by kernels/dropout (SDPA's CPU
    dropout takes its unfused path and PyTorch's per-element generator: ~1.4x slower forward +
    backward at inn_text8's shape)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [M, H, N, hd]
    if dropout == 0.0 or q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (apply_dropout(w, dropout) @ v).transpose(1, 2)


def topk_attention_reference(q, k, v, idx, dropout: float = 0.0) -> torch.Tensor:
    """q, k, v [M, N, H, hd], idx [M, N, k] -> [M, N, H, hd], over each neuron's picked neurons."""
    rows = torch.arange(q.shape[0], device=q.device)[:, None, None]
    k_sel, v_sel = k[rows, idx], v[rows, idx]  # [M, N, k, H, hd]
    logits = (q[:, :, None] * k_sel).sum(-1) / math.sqrt(q.shape[-1])  # [M, N, k, H]
    w = apply_dropout(torch.softmax(logits, dim=2), dropout)
    return (w[..., None] * v_sel).sum(2)
