"""INN — Intelligent Neural Network: a graph of neurons (SPEC section 2).

    e = Embed(tokens)                                   # [B, T, D]
    h = e broadcast to N neurons (+ neuron identity)    # [B, N, T, D]
    L x:  h = h + Mamba(LN1(h))                         # SSM along T for every (b, n)
          h = h + Router(LN2(h) as [B*T, N, D])         # across neurons, per time step
    logits = LN_f(mean_n h) @ Embed^T                   # tied head

Neuron symmetry breaking (the authors' code has none, so its N neuron states stay
identical): `neuron_identity: embedding` adds a learned vector per neuron at entry;
`per_neuron_conv` gives every neuron its own depthwise conv kernel; `adapter_rank` > 0 adds
a per-neuron low-rank adapter on the SSM input projection. `neuron_identity: none` with both
options off is the authors' symmetric variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .layers import Dropout
from .mamba import ConvImpl, MambaBlock, MambaState, conv_impl_option
from .neuron_router import build_router
from .recurrent import RecurrentGeneration
from .registry import ModelConfig, option, register_model


@dataclass(frozen=True, kw_only=True)
class INNConfig(ModelConfig):
    arch: Literal["inn"] = "inn"
    d_model: int = option(256, gt=0)
    n_neurons: int = option(32, gt=0)
    n_layer: int = option(6, gt=0)
    n_head: int = option(4, gt=0, description="attention heads over the neuron axis")
    d_state: int = option(16, gt=0)
    d_conv: int = option(4, gt=0)
    expand: int = option(2, gt=0)
    dropout: float = option(0.1, ge=0.0, lt=1.0)
    routing: Literal["dense", "none", "static", "topk", "hierarchical"] = "dense"
    topk: int = option(8, gt=0, description="neurons each neuron attends to (routing: topk)")
    topk_sketch_dim: int = option(32, ge=0, description="random-sketch size for picking the top k (0: exact scores)")
    group_size: int = option(32, gt=1, description="neurons per group (routing: hierarchical)")
    neuron_identity: Literal["none", "embedding"] = "embedding"
    per_neuron_conv: bool = False
    adapter_rank: int = option(0, ge=0, description="per-neuron low-rank adapter on the SSM in_proj (0: off)")
    scan_impl: Literal["auto", "sequential", "chunked", "cpp", "cuda", "triton"] = "auto"
    scan_chunk_size: int = option(0, ge=0, description="chunked scan chunk length (0: from the shapes)")
    conv_impl: ConvImpl = conv_impl_option()
    router_impl: Literal["auto", "reference", "triton"] = option(
        "auto", description="neuron attention kernels of the dense/top-k/hierarchical routers: triton or reference (PyTorch; dense through "
        "scaled_dot_product_attention); auto: top-k in Triton on CUDA when installed, dense through SDPA")
    checkpoint_layers: bool = option(False, description="recompute each layer in backward (activation memory)")

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.routing == "hierarchical":
            n = self.n_neurons
            while n > self.group_size:
                if n % self.group_size:
                    raise ValueError(f"hierarchical routing: {n} neurons do not split into groups of {self.group_size}")
                n //= self.group_size

    @property
    def symmetric(self) -> bool:
        """True when nothing distinguishes the neurons (the authors' variant)."""
        return self.neuron_identity == "none" and not self.per_neuron_conv and self.adapter_rank == 0


class INNLayer(nn.Module):
    def __init__(self, cfg: INNConfig):
        super().__init__()
        self.ln_mem = nn.LayerNorm(cfg.d_model)
        self.memory = MambaBlock(cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand, n_neurons=cfg.n_neurons,
                                 per_neuron_conv=cfg.per_neuron_conv, adapter_rank=cfg.adapter_rank,
                                 scan_impl=cfg.scan_impl, chunk_size=cfg.scan_chunk_size,
                                 conv_impl=cfg.conv_impl)
        self.router = build_router(cfg.routing, cfg.d_model, cfg.n_head, cfg.n_neurons, cfg.dropout,
                                   cfg.topk, cfg.topk_sketch_dim, cfg.group_size, cfg.router_impl)
        self.ln_route = nn.LayerNorm(cfg.d_model) if self.router is not None else None
        self.drop = Dropout(cfg.dropout)

    def route(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, N, T, D] (or [B, N, D] for one step) -> h + Router(LN2(h))."""
        if self.router is None:
            return h
        m = self.ln_route(h)
        if h.dim() == 4:  # routed per time step: [B, N, T, D] -> [B*T, N, D] and back
            b, n, t, d = h.shape
            r = self.drop(self.router(m.transpose(1, 2).reshape(b * t, n, d)))  # dropout on the contiguous output
            return h + r.view(b, t, n, d).transpose(1, 2)
        return h + self.drop(self.router(m))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.drop(self.memory(self.ln_mem(h)))
        return self.route(h)

    def checkpointed(self, h: torch.Tensor) -> torch.Tensor:
        """forward(h), recomputed in backward: the memory half keeps only its input and runs neither
        the scan's forward nor out_proj again (MambaBlock.recomputed); the router half keeps its
        input and its q/k/v projections (`_keep_qkv`)."""
        h = h + self.drop(self.memory.recomputed(self.ln_mem, h))
        return checkpoint(self.route, h, use_reentrant=False, context_fn=self._keep_qkv)

    def _keep_qkv(self):
        """Selective checkpointing of the router half: its q/k/v projections' outputs are saved (the
        bulk of the router's FLOPs), everything else (norm, attention, output projection) recomputed."""
        weights = {m.qkv.weight.data_ptr() for m in self.router.modules() if hasattr(m, "qkv")} if self.router else set()

        def policy(ctx, op, *args, **kwargs):
            if op is torch.ops.aten.addmm.default and args[2].data_ptr() in weights:
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE
        return create_selective_checkpoint_contexts(policy)

    def prefill(self, h: torch.Tensor) -> tuple[torch.Tensor, MambaState]:
        y, state = self.memory(self.ln_mem(h), return_state=True)
        return self.route(h + self.drop(y)), state

    def step(self, h: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        y, state = self.memory.step(self.ln_mem(h), state)
        return self.route(h + self.drop(y)), state


@register_model("inn", INNConfig)
class INN(RecurrentGeneration, nn.Module):
    def __init__(self, cfg: INNConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.neuron_embed = (nn.Parameter(torch.randn(cfg.n_neurons, cfg.d_model) * 0.02)
                             if cfg.neuron_identity == "embedding" else None)
        self.drop = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(INNLayer(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        for layer in self.layers:  # residual branches scaled down with depth (as mamba-ssm does)
            with torch.no_grad():
                layer.memory.out_proj.weight /= math.sqrt(2 * cfg.n_layer)
                for name, p in (layer.router.named_parameters() if layer.router is not None else ()):
                    if name.endswith("out.weight"):
                        p /= math.sqrt(2 * cfg.n_layer)

    def _enter(self, e: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, (T,) D] -> neuron states [B, N, (T,) D]."""
        shape = (e.shape[0], self.cfg.n_neurons) + e.shape[1:]
        h = e.unsqueeze(1).expand(shape)
        if self.neuron_embed is not None:
            ident = self.neuron_embed if e.dim() == 2 else self.neuron_embed[:, None]
            h = h + ident
        return self.drop(h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.ln_f(h.mean(1)) @ self.embed.weight.T  # mean over neurons, tied head

    def neuron_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-layer neuron states [B, N, T, D] (before pooling)."""
        h = self._enter(self.embed(input_ids))
        for layer in self.layers:
            if self.cfg.checkpoint_layers and self.training and torch.is_grad_enabled():
                h = layer.checkpointed(h)
            else:
                h = layer(h)
        return h

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V]."""
        return self._head(self.neuron_states(input_ids))

    # -- recurrent decoding (RecurrentGeneration) ------------------------------------------------
    def prefill(self, input_ids: torch.Tensor):
        h = self._enter(self.embed(input_ids))
        states = []
        for layer in self.layers:
            h, s = layer.prefill(h)
            states.append(s)
        return self._head(h), states

    def decode_step(self, token_ids: torch.Tensor, states: list[MambaState]):
        h = self._enter(self.embed(token_ids))  # [B, N, D]
        new_states = []
        for layer, s in zip(self.layers, states):
            h, s = layer.step(h, s)
            new_states.append(s)
        return self._head(h), new_states

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in forward order (activation checkpointing and torch.compile act on them)."""
        return list(self.layers)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (3 x forward): per neuron and layer the SSM block (matmuls,
        conv, scan) and the router, plus the tied head."""
        c = self.cfg
        layer = self.layers[0]
        per_neuron = layer.memory.flops_per_token()
        if layer.router is not None:
            per_neuron += layer.router.flops_per_neuron(c.n_neurons)
        return 3 * (c.n_layer * c.n_neurons * per_neuron + 2 * c.d_model * c.vocab_size)
