"""Generation for recurrent language models (INN, Mamba stack, LSTM): the prompt runs once
through the full-sequence forward (prefill), then every new token costs one recurrent step,
O(1) in the length of the context. Sampling is model/generation.py's, shared by all families;
the signature matches the KV-cached families' `generate`."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch

from .generation import sample_next_token


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """Apply `fn` to every tensor of a state made of lists, tuples and dataclasses."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, s) for s in state)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: map_state(fn, getattr(state, f.name))
                                             for f in dataclasses.fields(state)})
    raise TypeError(f"cannot map a recurrent state part of type {type(state).__name__}")


def cat_states(states: list[Any], dim: int) -> Any:
    """States of the same structure concatenated tensor by tensor along `dim`."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim)
    if isinstance(first, (list, tuple)):
        return type(first)(cat_states(list(parts), dim) for parts in zip(*states))
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: cat_states([getattr(s, f.name) for s in states], dim)
                                             for f in dataclasses.fields(first)})
    raise TypeError(f"cannot concatenate recurrent state parts of type {type(first).__name__}")


class RecurrentGeneration:
    """Mixin: a model defines `prefill(input_ids) -> (logits [B, T, V], state)` and
    `decode_step(token_ids [B], state) -> (logits [B, V], state)`; it gets `generate`."""

    state_batch_dim = 0  # batch axis of the state's tensors (beam search reorders along it)

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decode_step(self, token_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def prefill_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """`prefill` of a padded batch (attention_mask [B, T], 0: padding; each row's tokens one
        contiguous run, padded on the left or the right): the tokens of each row run without its
        padding (rows of equal length together), so padding never enters a state and every row's
        logits and state are those of its own prefill. Logits at padded positions are zero."""
        mask = attention_mask.bool()
        lengths, starts = mask.sum(1), mask.int().argmax(1)
        span = torch.arange(input_ids.shape[1], device=mask.device)
        contiguous = (span >= starts[:, None]) & (span < (starts + lengths)[:, None])
        if not bool((contiguous == mask).all()) or not bool((lengths > 0).all()):
            raise ValueError("attention_mask: each row needs one contiguous run of tokens (padding on the left or right)")
        logits, groups, order = None, [], []
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero()[:, 0]
            where = starts[rows, None] + torch.arange(length, device=mask.device)  # [rows, length]
            group_logits, state = self.prefill(input_ids[rows[:, None], where])
            if logits is None:
                logits = group_logits.new_zeros(*input_ids.shape, group_logits.shape[-1])
            logits[rows[:, None], where] = group_logits
            groups.append(state)
            order.append(rows)
        inverse = torch.argsort(torch.cat(order))
        state = map_state(lambda t: t.index_select(self.state_batch_dim, inverse.to(t.device)),
                          cat_states(groups, self.state_batch_dim))
        return logits, state

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
