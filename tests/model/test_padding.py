"""Padded batches (attention_mask 0 at padding, on the left or on the right) in every family:
each row's logits equal the row run alone, and a padded batch decoded with its cache (KV or
recurrent state) continues each row exactly as the row's own decoding does."""
from __future__ import annotations

import pytest
import torch

from neurograph.model import build_model
from neurograph.model.recurrent import RecurrentGeneration

VOCAB = 50
FAMILIES = {
    "transformer": {"arch": "transformer", "d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 64, "max_seq_len": 64},
    "transformer_rope": {"arch": "transformer", "d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 64,
                         "max_seq_len": 64, "positions": "rope"},
    "inl": {"arch": "inl", "d_model": 32, "n_layer": 2, "n_head": 4, "num_iterations": 2, "controller_rank": 16,
            "max_seq_len": 64, "positions": "rope"},
    "inl_sinusoidal": {"arch": "inl", "d_model": 32, "n_layer": 2, "n_head": 4, "num_iterations": 2,
                       "controller_rank": 16, "max_seq_len": 64},
    "inn": {"arch": "inn", "d_model": 32, "n_neurons": 4, "n_layer": 2, "n_head": 2, "d_state": 8, "dropout": 0.0},
    "mamba_stack": {"arch": "mamba_stack", "d_model": 32, "n_layer": 2, "d_state": 8},
    "lstm": {"arch": "lstm", "d_model": 32, "n_layer": 2, "dropout": 0.0},
}
LENGTHS = (5, 9, 3, 7)
DECODE_STEPS = 4


def padded(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    """(input_ids [B, T] with 0 at padding, attention_mask [B, T], each row's slice)."""
    t = max(len(r) for r in rows)
    ids, mask = torch.zeros(len(rows), t, dtype=torch.long), torch.zeros(len(rows), t, dtype=torch.long)
    where = [slice(t - len(r), t) if side == "left" else slice(0, len(r)) for r in rows]
    for i, (row, at) in enumerate(zip(rows, where)):
        ids[i, at], mask[i, at] = row, 1
    return ids, mask, where


def prefill(model, ids: torch.Tensor, mask: torch.Tensor):
    """(logits, cache) of a padded batch: KV caches for attention families, the recurrent state otherwise."""
    if isinstance(model, RecurrentGeneration):
        return model.prefill_padded(ids, mask)
    caches = model.new_caches()
    return model(ids, caches, mask), caches


def step(model, token: torch.Tensor, cache, mask: torch.Tensor):
    """Logits [B, V] of one more token per row, and the cache after it."""
    if isinstance(model, RecurrentGeneration):
        return model.decode_step(token, cache)
    return model(token[:, None], cache, mask)[:, -1], cache


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    torch.manual_seed(0)
    return build_model({**FAMILIES[request.param], "vocab_size": VOCAB}).eval()


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_rows_equal_rows_alone(model, side):
    torch.manual_seed(1)
    rows = [torch.randint(1, VOCAB, (n,)) for n in LENGTHS]
    ids, mask, where = padded(rows, side)
    logits, _ = prefill(model, ids, mask)
    for i, (row, at) in enumerate(zip(rows, where)):
        torch.testing.assert_close(logits[i, at], model(row[None])[0], atol=2e-6, rtol=0)


@torch.no_grad()
def test_cached_decoding_of_a_left_padded_batch_equals_each_rows_own(model):
    """Greedy decoding, as `generate` does with left-padded prompts: the cache after the padded
    prefill, then one token per row per step, the mask growing by a column of ones."""
    torch.manual_seed(2)
    rows = [torch.randint(1, VOCAB, (n,)) for n in LENGTHS]
    ids, mask, _ = padded(rows, "left")
    logits, cache = prefill(model, ids, mask)
    batch = []
    for _ in range(DECODE_STEPS):
        token = logits[:, -1].argmax(-1) if logits.dim() == 3 else logits.argmax(-1)
        batch.append(token)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = step(model, token, cache, mask)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], DECODE_STEPS)[0, len(row):]
        assert torch.stack(batch, 1)[i].tolist() == alone.tolist()
