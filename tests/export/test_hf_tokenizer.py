"""Tokenizer export details that need no trained model: special tokens from the manifest, ids laid
out as the project's CharTokenizer lays them out, the INL card's chat template (export.chat_template
of the INL configs), the roles every export defines, and text outside the training vocabulary
for every tokenizer kind."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from neurograph.data_pipeline import load_manifest, load_tokenizer, prepare_corpus
from neurograph.data_pipeline.tokenizers import CharTokenizer, role_ids
from neurograph.launch.export.tokenizer import hf_tokenizer
from tests.conftest import corpus_text

CHARS = [" ", "a", "b", "c", "\n"]
ROLES = ["<USER>", "<ASSISTANT>", "<SYSTEM>", "<ERROR>"]
INL_CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("**/inl*.yaml")
                     if "experiments" not in p.parts)  # the experiment configs train only
OOV_TEXT = "Café naïve — 3×4 ☃ 東京."  # beyond ASCII, the vocabulary of the test's corpus


def char_data(tmp_path: Path, specials: list[str], roles: dict) -> tuple[CharTokenizer, dict]:
    """The project's character tokenizer saved in `tmp_path`, and the manifest entry prepare writes."""
    tok = CharTokenizer(CHARS, specials, roles)
    manifest = {"tokenizer": {"kind": "char", "vocab_size": tok.vocab_size, "file": tok.save(tmp_path),
                              "special_tokens": tok.special_tokens, **role_ids(tok)}}
    return tok, manifest


def test_special_tokens_and_chat_template(tmp_path):
    project, manifest = char_data(tmp_path, ROLES, {"eos": "<eos>"})
    template = yaml.safe_load(INL_CONFIGS[0].read_text())["export"]["chat_template"]
    hf_tokenizer(tmp_path, manifest, template)[0].save_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<eos>" and tok.eos_token_id == 0
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
    manifest["tokenizer"]["special_tokens"] = {"<USER>": 9}
    with pytest.raises(ValueError, match="<USER>.*9"):
        hf_tokenizer(tmp_path, manifest)


def exported(data_dir: Path, out: Path):
    """The data directory's tokenizer, exported and loaded as a client loads it."""
    hf_tokenizer(data_dir, load_manifest(data_dir))[0].save_pretrained(out)
    return AutoTokenizer.from_pretrained(out, trust_remote_code=False)


@pytest.mark.parametrize("kind", ["char", "sentencepiece", "bpe"])
def test_every_kind_has_roles_and_tokenizes_text_outside_its_vocabulary(kind, tmp_path):
    """Data prepared with defaults: EOS <|endoftext|> (also BOS and PAD), and for characters an UNK
    that stands in for characters the corpus lacks; the subword kinds fall back to bytes, losslessly."""
    corpus = corpus_text(chars=30_000).encode("ascii", "ignore").decode()
    (tmp_path / "corpus.txt").write_text(corpus)
    prepare_corpus([str(tmp_path / "corpus.txt")], tmp_path / "data", tokenizer=kind, vocab_size=400, seq_len=32,
                   val_fraction=0.1, samples_per_shard=64)
    info = load_manifest(tmp_path / "data")["tokenizer"]
    tok = exported(tmp_path / "data", tmp_path / "hf")
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == info["eos_id"]
    ids = tok.encode(OOV_TEXT, add_special_tokens=False)
    if kind == "char":
        assert tok.unk_token_id == info["unk_id"] is not None
        unknown = [c not in corpus for c in OOV_TEXT]
        assert [i == tok.unk_token_id for i in ids] == unknown and sum(unknown) >= 8
        assert ids == load_tokenizer(tmp_path / "data").encode(OOV_TEXT)  # the project's own tokenizer agrees
    else:
        assert tok.decode(ids) == OOV_TEXT


def test_data_without_eos_or_unk_gets_them_appended(tmp_path):
    """Data prepared before every kind reserved them (or under normalize=text8): EOS and UNK take the
    ids after the vocabulary."""
    _, manifest = char_data(tmp_path, [], {})
    tokenizer, roles = hf_tokenizer(tmp_path, manifest)
    assert roles == {"bos": 5, "eos": 5, "pad": 5, "unk": 6} and len(tokenizer) == 7
    tokenizer.save_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=False)
    assert (tok.eos_token, tok.unk_token) == ("<|endoftext|>", "<unk>")
    assert tok.encode("cab é\n", add_special_tokens=False) == [4, 2, 3, 1, 6, 0]  # "\n", " ", a, b, c: sorted
