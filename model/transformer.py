"""Decoder-only Transformer baseline: pre-norm blocks, causal SDPA, tied embeddings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn

from .generation import generate
from .layers import (MLP, CausalSelfAttention, Dropout, KVCache, Padding, RotaryEmbedding, TokenPositions,
                     check_shapes, init_gpt_weights)
from .registry import ModelConfig, option, register_model


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(ModelConfig):
    arch: Literal["transformer"] = "transformer"
    d_model: int = option(256, gt=0)
    n_layer: int = option(6, gt=0)
    n_head: int = option(4, gt=0)
    d_ff: int = option(1024, gt=0)
    max_seq_len: int = option(256, gt=0)
    dropout: float = option(0.0, ge=0.0, lt=1.0)
    positions: Literal["learned", "sinusoidal", "rope"] = "learned"
    bias: bool = False

    @property
    def context_length(self) -> int:
        return self.max_seq_len

    def __post_init__(self):
        check_shapes(self.d_model, self.n_head, self.positions == "rope")


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig, rotary: Optional[RotaryEmbedding]):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_head, cfg.dropout, cfg.bias, rotary)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.bias)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None,
                padding: Optional[Padding] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cache, padding)
        return x + self.mlp(self.ln_mlp(x))


@register_model("transformer", TransformerConfig)
class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = TokenPositions(cfg.positions, cfg.max_seq_len, cfg.d_model, cfg.n_head)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, self.positions.rotary) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(init_gpt_weights)

    def forward(self, input_ids: torch.Tensor, caches: Optional[list[KVCache]] = None,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V]. With `caches` (one per layer), positions continue
        after the cached tokens and the caches are extended. `attention_mask` [B, cached + T]
        (0: padding, left or right) hides padded keys and positions each row as if unpadded."""
        offset = caches[0].length if caches else 0
        padding = Padding.from_mask(attention_mask, offset, input_ids.shape[1])
        x = self.drop(self.positions(self.embed(input_ids), offset, padding))  # [B, T, D]
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None, padding)
        return self.ln_f(x) @ self.embed.weight.T  # tied head

    @property
    def context_length(self) -> int:
        return self.cfg.max_seq_len

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    generate = generate  # KV-cached decoding (model/generation.py)

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in forward order (activation checkpointing and torch.compile act on them)."""
        return list(self.blocks)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward): matmuls plus attention."""
        c = self.cfg
        matmul_params = c.n_layer * (4 * c.d_model**2 + 2 * c.d_model * c.d_ff) + c.d_model * c.vocab_size
        attention = c.n_layer * 2 * seq_len * c.d_model  # QK^T and AV, causal half counted as full/2
        return 3 * 2 * (matmul_params + attention)
