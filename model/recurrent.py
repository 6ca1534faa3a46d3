"""Generation for recurrent language models (INN, Mamba stack, LSTM): prefill the prompt once
with the full-sequence forward, then decode one token at a time from the recurrent state,
O(1) per token in the length of the context."""
from __future__ import annotations

from typing import Any, Optional

import torch


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]. temperature <= 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


class RecurrentGeneration:
    """Mixin: a model defines `prefill(input_ids) -> (logits [B, T, V], state)` and
    `decode_step(token_ids [B], state) -> (logits [B, V], state)`; it gets `generate`."""

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decode_step(self, token_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """input_ids [B, T] -> [B, T + max_new_tokens]. Call `eval()` first for dropout-free decoding."""
        if max_new_tokens <= 0:
            return input_ids
        logits, state = self.prefill(input_ids)
        tokens = [input_ids]
        nxt = sample_next(logits[:, -1], temperature, top_k, generator)
        for i in range(max_new_tokens):
            tokens.append(nxt[:, None])
            if i + 1 == max_new_tokens:
                break
            logits, state = self.decode_step(nxt, state)
            nxt = sample_next(logits, temperature, top_k, generator)
        return torch.cat(tokens, dim=1)
