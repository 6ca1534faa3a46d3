"""Layers shared by the model families: dropout, causal self-attention with an optional KV cache,
rotary and sinusoidal positions, and the GELU MLP."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import dropout  # kernels/dropout/


def check_shapes(d_model: int, n_head: int, rope: bool = False, group_size: int = 0) -> None:
    """Config validation shared by the attention models: heads split d_model evenly, rotary
    needs an even head dimension, equilibrium groups (INL) split d_model evenly."""
    if d_model % n_head:
        raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
    if rope and (d_model // n_head) % 2:
        raise ValueError("rope needs an even head dimension")
    if group_size and d_model % group_size:
        raise ValueError(f"d_model {d_model} is not divisible by group_size {group_size}")


class Dropout(nn.Dropout):
    """nn.Dropout through kernels/dropout/ (on CPU a counter-based mask: nothing stored for backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def init_gpt_weights(module: nn.Module) -> None:
    """GPT-2 initialisation (use with `model.apply`): N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class KVCache:
    """Keys and values of one attention layer for the tokens seen so far: [B, H, T, hd]."""

    def __init__(self):
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@dataclass
class Padding:
    """The layout of a padded batch, from its attention_mask [B, S] (1: a token, 0: padding; S counts
    cached tokens too): each new token's position (the number of tokens before it in its row, so a
    left-padded row is positioned as if unpadded) and the keys attention may see."""

    positions: torch.Tensor  # [B, T] of the T new tokens
    keys: torch.Tensor  # [B, S] bool

    @classmethod
    def from_mask(cls, attention_mask: Optional[torch.Tensor], offset: int, t: int) -> Optional["Padding"]:
        """None when there is no padding (the unpadded fast paths apply)."""
        if attention_mask is None:
            return None
        if attention_mask.shape[1] != offset + t:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens, the input {offset} cached "
                             f"+ {t} new")
        keys = attention_mask.bool()
        if bool(keys.all()):
            return None
        return cls((keys.long().cumsum(-1) - 1).clamp(min=0)[:, offset:], keys)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) applied to queries and keys."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # [T, hd/2]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0, padding: Optional[Padding] = None) -> torch.Tensor:
        # x: [B, H, T, hd]; rotate channel pairs (even, odd) by position-dependent angles.
        t = x.shape[2]
        if padding is None:
            cos, sin = self.cos[offset : offset + t].to(x.dtype), self.sin[offset : offset + t].to(x.dtype)
        else:  # per-row positions: [B, 1, T, hd/2]
            cos, sin = (table[padding.positions].unsqueeze(1).to(x.dtype) for table in (self.cos, self.sin))
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def sinusoidal_positions(max_seq_len: int, d_model: int) -> torch.Tensor:
    """The original Transformer's fixed position table: [T, D]."""
    pos = torch.arange(max_seq_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_seq_len, d_model)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


class TokenPositions(nn.Module):
    """Positions of a decoder's input: learned or sinusoidal tables are added to the token
    embeddings; with `rope` nothing is added and `rotary` is handed to attention instead.
    Positions continue after `offset` cached tokens, or come from `padding`."""

    def __init__(self, kind: str, max_seq_len: int, d_model: int, n_head: int):
        super().__init__()
        self.kind, self.max_seq_len = kind, max_seq_len
        self.rotary = RotaryEmbedding(d_model // n_head, max_seq_len) if kind == "rope" else None
        if kind == "learned":
            self.table = nn.Embedding(max_seq_len, d_model)
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_positions(max_seq_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0, padding: Optional[Padding] = None) -> torch.Tensor:
        t = x.shape[1]  # x: [B, T, D]
        if offset + t > self.max_seq_len:
            raise ValueError(f"sequence of {offset + t} tokens exceeds max_seq_len {self.max_seq_len}")
        if self.kind == "rope":
            return x
        positions = torch.arange(offset, offset + t, device=x.device) if padding is None else padding.positions
        if self.kind == "learned":
            return x + self.table(positions)
        return x + self.table[positions].to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (PyTorch SDPA), optionally rotary, optionally cached; with
    `padding`, keys at padded positions are hidden (a padding query sees itself only)."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0, bias: bool = False,
                 rotary: Optional[RotaryEmbedding] = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = Dropout(dropout)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None,
                padding: Optional[Padding] = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (y.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for y in (q, k, v))  # [B, H, T, hd]
        offset = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, offset, padding), self.rotary(k, offset, padding)
        if cache is not None:
            k, v = cache.append(k, v)
        dropout_p = self.dropout if self.training else 0.0
        if offset == 0 and padding is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # New queries sit at slots offset..offset+t-1 and see every key up to their own.
            keys = torch.arange(offset + t, device=x.device)[None, :]
            own = offset + torch.arange(t, device=x.device)[:, None]
            allowed = keys <= own  # [T, S]
            if padding is not None:
                allowed = (allowed & padding.keys[:, None, None, :]) | (keys == own)  # [B, 1, T, S]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise GELU feed-forward network."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))
