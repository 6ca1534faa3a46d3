"""An export whose tokenizer appended ids the model was not trained with (an EOS or UNK the data
lacked): their embedding and output rows are zero, their logits -inf, every other logit is the
trained model's; the appended EOS works as a prompt's first token and as generation's stop."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from neurograph.launch.export.hf import save_hf_model
from neurograph.model import build_model, parse_model_config

VOCAB = 20
APPENDED = {"bos": VOCAB, "eos": VOCAB, "pad": VOCAB, "unk": VOCAB + 1}
FAMILIES = {
    "inl_tied": {"arch": "inl", "d_model": 32, "n_layer": 1, "n_head": 4, "num_iterations": 2, "controller_rank": 8,
                 "max_seq_len": 32},
    "lstm": {"arch": "lstm", "d_model": 32, "n_layer": 1, "dropout": 0.0},
}


@pytest.fixture(autouse=True)
def forget_patched_linspace():
    """transformers' loading patches torch.linspace while it builds the model on the meta device; if
    torch's device context first lists its factory functions then (an lru_cache), it keeps the patched
    function and later `with torch.device("meta")` blocks in this process make linspace on the CPU.
    Clear that cache after the test, so the tests after it see torch as it is."""
    yield
    torch.utils._device._device_constructors.cache_clear()


@pytest.mark.parametrize("name", FAMILIES)
@torch.no_grad()
def test_appended_ids_are_never_predicted(name, tmp_path):
    torch.manual_seed(0)
    cfg = parse_model_config({**FAMILIES[name], "vocab_size": VOCAB})
    model = build_model(cfg).eval()
    save_hf_model(model, dataclasses.asdict(cfg), tmp_path, roles=APPENDED, vocab_size=VOCAB + 2)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    logits = hf(ids, use_cache=False).logits
    assert logits.shape[-1] == VOCAB + 2 and torch.isneginf(logits[..., VOCAB:]).all()
    torch.testing.assert_close(logits[..., :VOCAB], model(ids), atol=1e-6, rtol=0)
    with_bos = hf(torch.cat([torch.full((2, 1), VOCAB), ids], dim=1), use_cache=False).logits
    assert torch.isfinite(with_bos[..., :VOCAB]).all()
    assert hf.generation_config.eos_token_id == VOCAB and hf.config.trained_vocab_size == VOCAB
