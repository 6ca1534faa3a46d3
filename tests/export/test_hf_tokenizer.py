"""Tokenizer export details that need no trained model: special tokens from the manifest and the
INL card's chat template (model/hf/inl_chat_template.jinja)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launch.hf_tokenizer import hf_tokenizer

CHARS = [" ", "a", "b", "c", "\n"]
SPECIAL = {"<USER>": 5, "<ASSISTANT>": 6, "<SYSTEM>": 7, "<ERROR>": 8, "<eos>": 9}
TEMPLATE = Path(__file__).resolve().parents[2] / "model" / "hf" / "inl_chat_template.jinja"


def char_data(tmp_path: Path, special: dict) -> tuple[Path, dict]:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "char", "vocab": CHARS}))
    manifest = {"tokenizer": {"kind": "char", "vocab_size": 10, "file": "tokenizer.json", "special_tokens": special,
                              "eos_id": special.get("<eos>"), "bos_id": None, "pad_id": None}}
    return tmp_path, manifest


def test_special_tokens_and_chat_template(tmp_path):
    data, manifest = char_data(tmp_path, SPECIAL)
    hf_tokenizer(data, manifest, TEMPLATE.read_text()).save_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == "<eos>" and tok.eos_token_id == 9 and tok.bos_token is None
    chat = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c a"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<USER> ab\n<ASSISTANT> c a\n<ASSISTANT> "
    ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids == [5, 0, 1, 2, 4, 6, 0, 3, 0, 1, 4, 6, 0]
    assert tok.decode(ids) == text and tok.decode(ids, skip_special_tokens=True) == " ab\n c a\n "


def test_special_token_id_mismatch_is_named(tmp_path):
    data, manifest = char_data(tmp_path, {"<USER>": 7})
    with pytest.raises(ValueError, match="<USER>.*7"):
        hf_tokenizer(data, manifest)
