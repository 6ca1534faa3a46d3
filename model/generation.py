"""Autoregressive decoding shared by the model families: logits filtering (temperature,
top-k, top-p), greedy or sampled next tokens, and a cached generation loop for models with
`new_caches()` and `forward(ids, caches)`."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """logits [B, V] -> temperature-scaled logits with -inf outside top-k / nucleus top-p."""
    logits = logits / max(temperature, 1e-8)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                      top_p: Optional[float] = None, do_sample: bool = False,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits [B, V] -> next ids [B, 1]; greedy unless `do_sample`."""
    if not do_sample:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = False,
             use_cache: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Autoregressive decoding: [B, T0] -> [B, T0 + max_new_tokens]. With `use_cache` the prompt is
    run once and every later step feeds only the new token (attention reads the KV cache, the
    integrator runs for that token only); without it every step re-runs the whole sequence.
    Past the model's context the window slides: the newest half-context is re-encoded."""
    context = getattr(model, "context_length", None)
    was_training = model.training
    model.eval()
    try:
        ids = input_ids if context is None else input_ids[:, -context:]
        caches = model.new_caches() if use_cache else None
        logits = model(ids, caches)[:, -1]
        ids = input_ids
        for step in range(max_new_tokens):
            nxt = sample_next_token(logits, temperature, top_k, top_p, do_sample, generator)
            ids = torch.cat([ids, nxt], dim=1)
            if step == max_new_tokens - 1:
                break
            if not use_cache:
                logits = model(ids if context is None else ids[:, -context:])[:, -1]
            elif context is not None and caches[0].length >= context:
                caches = model.new_caches()
                logits = model(ids[:, -(context // 2):], caches)[:, -1]
            else:
                logits = model(nxt, caches)[:, -1]
        return ids
    finally:
        model.train(was_training)
