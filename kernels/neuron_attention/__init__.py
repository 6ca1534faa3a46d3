"""Attention across the neuron axis (the INN routers' hot path): the one dispatch.

For M = B x T independent problems of N neurons, H heads of width hd (q, k, v [M, N, H, hd]):
- dense: y_i = sum_j softmax_j(q_i . k_j / sqrt(hd)) v_j over all N neurons (hierarchical
  routing calls it on groups: M x N/G problems of G neurons);
- top-k: the same over each neuron's k picked neurons idx [M, N, k] only.

impl "reference" is PyTorch (reference.py: scaled_dot_product_attention; for top-k a gather of the
picked keys/values, [M, N, k, H, hd]); "triton" the fused kernels of triton.py (CUDA, or CPU under
TRITON_INTERPRET=1), which read the picks through their indices and apply
attention dropout inside (a Philox mask from a seed drawn from torch's CPU generator, so its
draws differ from the reference's kernels/dropout). "auto": dense attention always takes the
reference, i.e. SDPA over the M problems (FlashAttention or memory-efficient kernels on CUDA, their
own fused dropout there): on an H200 the dense Triton kernel ran at 0.78x eager (BENCHMARKS.md,
"Triton kernels"); top-k takes Triton on CUDA when it is installed (3.8x), the reference otherwise.
"""
from __future__ import annotations

import torch

from ..installed import triton_available
from .reference import neuron_attention_reference, topk_attention_reference

ATTENTION_IMPLS = ("auto", "reference", "triton")
__all__ = ["ATTENTION_IMPLS", "neuron_attention", "neuron_attention_reference", "topk_attention_reference",
           "topk_neuron_attention"]


def _use_triton(impl: str, x: torch.Tensor, auto_takes_triton: bool) -> bool:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown neuron attention impl {impl!r}; choose from {ATTENTION_IMPLS}")
    if impl == "auto":
        return auto_takes_triton and x.is_cuda and triton_available()
    return impl == "triton"


def neuron_attention(q, k, v, impl: str = "auto", dropout: float = 0.0) -> torch.Tensor:
    """Dense neuron attention (see the module docstring); `dropout` on the attention weights."""
    if _use_triton(impl, q, auto_takes_triton=False):
        from .triton import TritonNeuronAttention, draw_seed

        return TritonNeuronAttention.apply(q, k, v, dropout, draw_seed() if dropout > 0.0 else 0)
    return neuron_attention_reference(q, k, v, dropout)


def topk_neuron_attention(q, k, v, idx, impl: str = "auto", dropout: float = 0.0) -> torch.Tensor:
    """Top-k neuron attention (see the module docstring); `dropout` on the attention weights."""
    if _use_triton(impl, q, auto_takes_triton=True):
        from .triton import TritonTopKAttention, draw_seed

        return TritonTopKAttention.apply(q, k, v, idx, dropout, draw_seed() if dropout > 0.0 else 0)
    return topk_attention_reference(q, k, v, idx, dropout)
