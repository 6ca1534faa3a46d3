"""Tokenizer export details that need no trained model: special tokens from the manifest, ids laid
out as the project's CharTokenizer lays them out, and the INL card's chat template
(export.chat_template of the INL configs)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from neurograph.data_pipeline.tokenizers import CharTokenizer, role_ids
from neurograph.launch.export.tokenizer import hf_tokenizer

CHARS = [" ", "a", "b", "c", "\n"]
ROLES = ["<USER>", "<ASSISTANT>", "<SYSTEM>", "<ERROR>"]
INL_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("**/inl*.yaml"))


def char_data(tmp_path: Path, specials: list[str], roles: dict) -> tuple[CharTokenizer, dict]:
    """The project's character tokenizer saved in `tmp_path`, and the manifest entry prepare writes."""
    tok = CharTokenizer(CHARS, specials, roles)
    manifest = {"tokenizer": {"kind": "char", "vocab_size": tok.vocab_size, "file": tok.save(tmp_path),
                              "special_tokens": tok.special_tokens, **role_ids(tok)}}
    return tok, manifest


def test_special_tokens_and_chat_template(tmp_path):
    project, manifest = char_data(tmp_path, ROLES, {"eos": "<eos>"})
    template = yaml.safe_load(INL_CONFIGS[0].read_text())["export"]["chat_template"]
    hf_tokenizer(tmp_path, manifest, template).save_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == "<eos>" and tok.eos_token_id == 0 and tok.bos_token is None
    assert tok.convert_tokens_to_ids(ROLES) == [1, 2, 3, 4]
    chat = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c a"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<USER> ab\n<ASSISTANT> c a\n<ASSISTANT> "
    ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids == project.encode(text) and len(ids) == len(text.replace("<USER>", "U").replace("<ASSISTANT>", "A"))
    assert tok.decode(ids) == text and tok.decode(ids, skip_special_tokens=True) == " ab\n c a\n "


def test_inl_configs_share_the_template():
    templates = {path.name: yaml.safe_load(path.read_text())["export"]["chat_template"] for path in INL_CONFIGS}
    assert len(templates) == 3 and len(set(templates.values())) == 1, templates


def test_special_token_id_mismatch_is_named(tmp_path):
    _, manifest = char_data(tmp_path, [], {})
    manifest["tokenizer"]["special_tokens"] = {"<USER>": 7}
    with pytest.raises(ValueError, match="<USER>.*7"):
        hf_tokenizer(tmp_path, manifest)
