"""LSTM baseline (SPEC section 4): embedding, stacked nn.LSTM, tied head (~4.3M parameters at
d_model 520, 2 layers, 27 symbols)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from .layers import Dropout
from .recurrent import RecurrentGeneration
from .registry import ModelConfig, option, register_model


@dataclass(frozen=True, kw_only=True)
class LSTMConfig(ModelConfig):
    arch: Literal["lstm"] = "lstm"
    d_model: int = option(520, gt=0, description="embedding and hidden size")
    n_layer: int = option(2, gt=0)
    dropout: float = option(0.1, ge=0.0, lt=1.0)


@register_model("lstm", LSTMConfig)
class LSTMLanguageModel(RecurrentGeneration, nn.Module):
    state_batch_dim = 1  # nn.LSTM's (h, c) are [layers, B, D]

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        nn.init.normal_(self.embed.weight, std=0.02)

    def _logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.drop(y) @ self.embed.weight.T  # tied head

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V]."""
        y, _ = self.lstm(self.drop(self.embed(input_ids)))
        return self._logits(y)

    def prefill(self, input_ids: torch.Tensor):
        y, state = self.lstm(self.drop(self.embed(input_ids)))
        return self._logits(y), state

    def decode_step(self, token_ids: torch.Tensor, state):
        y, state = self.lstm(self.drop(self.embed(token_ids[:, None])), state)
        return self._logits(y[:, 0]), state

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in forward order (activation checkpointing and torch.compile act on them)."""
        return [self.lstm]  # one nn.LSTM module runs every layer

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (3 x forward): the four gates' matmuls and the head."""
        d = self.cfg.d_model
        return 3 * 2 * (self.cfg.n_layer * 4 * (2 * d * d) + d * self.cfg.vocab_size)
