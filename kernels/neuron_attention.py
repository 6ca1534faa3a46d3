"""Attention across the neuron axis (the INN routers' hot path): references and one dispatch.

For M = B x T independent problems of N neurons, H heads of width hd (q, k, v [M, N, H, hd]):
- dense: y_i = sum_j softmax_j(q_i . k_j / sqrt(hd)) v_j over all N neurons (hierarchical
  routing calls it on groups: M x N/G problems of G neurons);
- top-k: the same over each neuron's k picked neurons idx [M, N, k] only.

impl "reference" is PyTorch (scaled_dot_product_attention; for top-k a gather of the picked
keys/values, [M, N, k, H, hd]); "triton" the fused kernels of kernels/neuron_attention_triton.py
(CUDA, or CPU under TRITON_INTERPRET=1), which read the picks through their indices and apply
attention dropout inside (a Philox mask from a seed drawn from torch's CPU generator, so its
draws differ from the reference's kernels/dropout.py). "auto": dense attention always takes the
reference, i.e. SDPA over the M problems (FlashAttention or memory-efficient kernels on CUDA, their
own fused dropout there): on an H200 the dense Triton kernel ran at 0.78x eager (BENCHMARKS.md,
"Triton kernels"); top-k takes Triton on CUDA when it is installed (3.8x), the reference otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dispatch import triton_available
from .dropout import dropout as apply_dropout

ATTENTION_IMPLS = ("auto", "reference", "triton")


def neuron_attention_reference(q, k, v, dropout: float = 0.0) -> torch.Tensor:
    """q, k, v [M, N, H, hd] -> [M, N, H, hd], dense over the N neurons: fused
    scaled_dot_product_attention, with its own dropout on CUDA (inside the fused kernels). On CPU,
    dropout spells the weights [M, H, N, N] out and drops them by kernels/dropout.py (SDPA's CPU
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


def _use_triton(impl: str, x: torch.Tensor, auto_takes_triton: bool) -> bool:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown neuron attention impl {impl!r}; choose from {ATTENTION_IMPLS}")
    if impl == "auto":
        return auto_takes_triton and x.is_cuda and triton_available()
    return impl == "triton"


def neuron_attention(q, k, v, impl: str = "auto", dropout: float = 0.0) -> torch.Tensor:
    """Dense neuron attention (see the module docstring); `dropout` on the attention weights."""
    if _use_triton(impl, q, auto_takes_triton=False):
        from .neuron_attention_triton import TritonNeuronAttention, draw_seed

        return TritonNeuronAttention.apply(q, k, v, dropout, draw_seed() if dropout > 0.0 else 0)
    return neuron_attention_reference(q, k, v, dropout)


def topk_neuron_attention(q, k, v, idx, impl: str = "auto", dropout: float = 0.0) -> torch.Tensor:
    """Top-k neuron attention (see the module docstring); `dropout` on the attention weights."""
    if _use_triton(impl, q, auto_takes_triton=True):
        from .neuron_attention_triton import TritonTopKAttention, draw_seed

        return TritonTopKAttention.apply(q, k, v, idx, dropout, draw_seed() if dropout > 0.0 else 0)
    return topk_attention_reference(q, k, v, idx, dropout)
