"""Communication across the neuron axis of the INN (SPEC section 2, routing variants).

Every router maps m [M, N, D] -> [M, N, D], where M = B*T: each time step routes among its
own N neurons (never across time, so causality rests on the SSM alone). Neurons are a
tensor axis everywhere; there is no Python loop over neurons.

- DenseRouter: multi-head attention over all N neurons (the paper). O(N^2 D) per token.
- StaticRouter: a fixed, untrained row-stochastic mixing matrix over neurons applied to
  learned value/output projections (the paper's "static communication" ablation).
- TopKRouter: each neuron attends to its k best-scoring neurons. Candidates are picked with
  scores from a fixed random sketch of q and k (dimension r, unbiased for q.k), so picking
  costs O(N r) per neuron; attention over the picked k uses the exact logits. With k = N it
  is dense attention.
- HierarchicalRouter: dense attention inside groups of G neurons, then attention among the
  group summaries (means), recursively while more than G summaries remain; each group's
  result is broadcast back to its members. Per-neuron cost stays flat in N. With one group
  it is dense attention.
`build_router(kind, ...)` is the one constructor; "none" returns None (no branch). The attention
itself (dense, top-k) goes through kernels/neuron_attention/'s dispatch (`impl`: auto, reference,
triton).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .neuron_attention import neuron_attention, topk_neuron_attention  # kernels/neuron_attention/

ROUTINGS = ("dense", "none", "static", "topk", "hierarchical")


class _Attention(nn.Module):
    """Q/K/V and output projections with biases (like torch.nn.MultiheadAttention)."""

    def __init__(self, d_model: int, n_head: int, dropout: float, impl: str = "auto"):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head, self.dropout, self.impl = n_head, dropout, impl
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, m: torch.Tensor):
        """m [M, N, D] -> q, k, v [M, N, H, hd]."""
        M, N, D = m.shape
        return self.qkv(m).view(M, N, 3, self.n_head, D // self.n_head).unbind(2)


class DenseRouter(_Attention):
    def forward(self, m: torch.Tensor) -> torch.Tensor:
        M, N, D = m.shape
        y = neuron_attention(*self.heads(m), self.impl, self.dropout if self.training else 0.0)  # [M, N, H, hd]
        return self.out(y.reshape(M, N, D))

    def flops_per_neuron(self, n: int) -> float:
        d = self.out.in_features
        return 2 * 4 * d * d + 4 * n * d


class StaticRouter(nn.Module):
    def __init__(self, d_model: int, n_neurons: int, seed: int = 0):
        super().__init__()
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("mixing", torch.softmax(torch.randn(n_neurons, n_neurons, generator=g), dim=-1))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.out(torch.matmul(self.mixing, self.value(m)))  # [N, N] @ [M, N, D]

    def flops_per_neuron(self, n: int) -> float:
        d = self.out.in_features
        return 2 * 2 * d * d + 2 * n * d


class TopKRouter(_Attention):
    def __init__(self, d_model: int, n_head: int, dropout: float, k: int, sketch_dim: int = 32, seed: int = 0,
                 impl: str = "auto"):
        super().__init__(d_model, n_head, dropout, impl)
        self.k = k
        self.sketch_dim = sketch_dim if 0 < sketch_dim < d_model else 0
        if self.sketch_dim:
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("sketch", torch.randn(d_model, self.sketch_dim, generator=g) / math.sqrt(self.sketch_dim))

    def select(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q, k [M, N, H, hd] -> indices [M, N, k] of each neuron's k best-scoring neurons."""
        M, N = q.shape[:2]
        if self.k >= N:
            return torch.arange(N, device=q.device).expand(M, N, N)
        q, k = q.reshape(M, N, -1), k.reshape(M, N, -1)
        if self.sketch_dim:
            q, k = q @ self.sketch, k @ self.sketch
        scores = torch.matmul(q, k.transpose(1, 2))  # [M, N, N], head-summed q.k (sketched)
        return scores.topk(self.k, dim=-1).indices

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        M, N, D = m.shape
        q, k, v = self.heads(m)  # [M, N, H, hd]
        with torch.no_grad():
            idx = self.select(q, k)  # [M, N, k]
        y = topk_neuron_attention(q, k, v, idx, self.impl, self.dropout if self.training else 0.0)  # [M, N, H, hd]
        return self.out(y.reshape(M, N, D))

    def flops_per_neuron(self, n: int) -> float:
        d, kk = self.out.in_features, min(self.k, n)
        select = 0 if self.k >= n else (2 * 2 * d * self.sketch_dim + 2 * n * self.sketch_dim if self.sketch_dim else 2 * n * d)
        return 2 * 4 * d * d + 4 * kk * d + select


class HierarchicalRouter(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, n_neurons: int, group_size: int, impl: str = "auto"):
        super().__init__()
        self.group_size = group_size
        self.local = DenseRouter(d_model, n_head, dropout, impl)
        n_groups = math.ceil(n_neurons / group_size)
        if n_groups > 1:
            if n_neurons % group_size:
                raise ValueError(f"{n_neurons} neurons do not split into groups of {group_size}")
            self.upper = (HierarchicalRouter(d_model, n_head, dropout, n_groups, group_size, impl)
                          if n_groups > group_size else DenseRouter(d_model, n_head, dropout, impl))
        else:
            self.upper = None

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        M, N, D = m.shape
        if self.upper is None:
            return self.local(m)
        G = self.group_size
        y = self.local(m.reshape(M * (N // G), G, D)).view(M, N // G, G, D)
        summary = self.upper(m.view(M, N // G, G, D).mean(2))  # [M, N/G, D]
        return (y + summary[:, :, None]).view(M, N, D)

    def flops_per_neuron(self, n: int) -> float:
        g = min(self.group_size, n)
        own = self.local.flops_per_neuron(g)
        if self.upper is None:
            return own
        return own + self.upper.flops_per_neuron(n // g) / g + 2 * self.local.out.in_features  # + mean & broadcast


def build_router(kind: str, d_model: int, n_head: int, n_neurons: int, dropout: float = 0.0,
                 topk: int = 8, sketch_dim: int = 32, group_size: int = 32, impl: str = "auto") -> Optional[nn.Module]:
    """`impl`: the attention kernels of the attention routers (kernels/neuron_attention/)."""
    if kind == "dense":
        return DenseRouter(d_model, n_head, dropout, impl)
    if kind == "none":
        return None
    if kind == "static":
        return StaticRouter(d_model, n_neurons)
    if kind == "topk":
        return TopKRouter(d_model, n_head, dropout, topk, sketch_dim, impl=impl)
    if kind == "hierarchical":
        return HierarchicalRouter(d_model, n_head, dropout, n_neurons, group_size, impl)
    raise ValueError(f"unknown routing {kind!r}; choose from {ROUTINGS}")
