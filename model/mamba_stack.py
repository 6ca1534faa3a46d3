"""Mamba-stack baseline (SPEC section 4): n_layer x (x + Mamba(LN(x))), LN_f, tied head."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from .layers import Dropout
from .mamba import ConvImpl, MambaBlock, MambaState, conv_impl_option
from .recurrent import RecurrentGeneration
from .registry import ModelConfig, option, register_model


@dataclass(frozen=True, kw_only=True)
class MambaStackConfig(ModelConfig):
    arch: Literal["mamba_stack"] = "mamba_stack"
    d_model: int = option(320, gt=0)
    n_layer: int = option(6, gt=0)
    d_state: int = option(16, gt=0)
    d_conv: int = option(4, gt=0)
    expand: int = option(2, gt=0)
    dropout: float = option(0.0, ge=0.0, lt=1.0)
    scan_impl: Literal["auto", "sequential", "chunked", "cpp", "cuda", "triton"] = "auto"
    scan_chunk_size: int = option(0, ge=0, description="chunked scan chunk length (0: from the shapes)")
    conv_impl: ConvImpl = conv_impl_option()


@register_model("mamba_stack", MambaStackConfig)
class MambaStack(RecurrentGeneration, nn.Module):
    def __init__(self, cfg: MambaStackConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(cfg.n_layer))
        self.blocks = nn.ModuleList(
            MambaBlock(cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand, scan_impl=cfg.scan_impl,
                       chunk_size=cfg.scan_chunk_size, conv_impl=cfg.conv_impl) for _ in range(cfg.n_layer))
        self.drop = Dropout(cfg.dropout)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            for block in self.blocks:
                block.out_proj.weight /= math.sqrt(cfg.n_layer)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V]."""
        x = self.drop(self.embed(input_ids))
        for norm, block in zip(self.norms, self.blocks):
            x = x + self.drop(block(norm(x)))
        return self.ln_f(x) @ self.embed.weight.T

    def prefill(self, input_ids: torch.Tensor):
        x = self.drop(self.embed(input_ids))
        states = []
        for norm, block in zip(self.norms, self.blocks):
            y, s = block(norm(x), return_state=True)
            x = x + self.drop(y)
            states.append(s)
        return self.ln_f(x) @ self.embed.weight.T, states

    def decode_step(self, token_ids: torch.Tensor, states: list[MambaState]):
        x = self.embed(token_ids)  # [B, D]
        new_states = []
        for norm, block, s in zip(self.norms, self.blocks, states):
            y, s = block.step(norm(x), s)
            x = x + self.drop(y)
            new_states.append(s)
        return self.ln_f(x) @ self.embed.weight.T, new_states

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in forward order (activation checkpointing and torch.compile act on them)."""
        return list(self.blocks)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (3 x forward)."""
        c = self.cfg
        return 3 * (c.n_layer * self.blocks[0].flops_per_token() + 2 * c.d_model * c.vocab_size)
