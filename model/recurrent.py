"""Generation for recurrent language models (INN, Mamba stack, LSTM): the prompt runs once
through the full-sequence forward (prefill), then every new token costs one recurrent step,
O(1) in the length of the context. Sampling is model/generation.py's, shared by all families;
the signature matches the KV-cached families' `generate`."""
from __future__ import annotations

from typing import Any, Optional

import torch

from .generation import sample_next_token


class RecurrentGeneration:
    """Mixin: a model defines `prefill(input_ids) -> (logits [B, T, V], state)` and
    `decode_step(token_ids [B], state) -> (logits [B, V], state)`; it gets `generate`."""

    state_batch_dim = 0  # batch axis of the state's tensors (beam search reorders along it)

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decode_step(self, token_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = False,
                 use_cache: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """[B, T0] -> [B, T0 + max_new_tokens], greedy unless `do_sample`. With `use_cache` the
        recurrent state carries the context; without it every step re-runs the whole sequence."""
        was_training = self.training
        self.eval()
        try:
            if use_cache:
                logits, state = self.prefill(input_ids)
            else:
                logits, state = self(input_ids), None
            logits, ids = logits[:, -1], input_ids
            for step in range(max_new_tokens):
                nxt = sample_next_token(logits, temperature, top_k, top_p, do_sample, generator)  # [B, 1]
                ids = torch.cat([ids, nxt], dim=1)
                if step == max_new_tokens - 1:
                    break
                if use_cache:
                    logits, state = self.decode_step(nxt[:, 0], state)
                else:
                    logits = self(ids)[:, -1]
            return ids
        finally:
            self.train(was_training)
