"""prepare_corpus: shards, manifest, dtype, errors; load_manifest and verify."""
import json

import numpy as np
import pytest

from data_pipeline import iter_split_once, load_manifest, load_tokenizer, prepare_corpus, verify
from data_pipeline.manifest import ShardError


def _read_all(data_dir, split):
    """Every sample of a split in manifest order (one slot, no shuffle)."""
    return list(iter_split_once(data_dir, split, shuffle=False))


def test_manifest_matches_shards_and_reconstructs_text(small_data, shakespeare):
    m = load_manifest(small_data)
    assert m["format_version"] == 1 and m["dtype"] == "uint16" and m["seq_len"] == 16
    assert m["tokenizer"] == {"kind": "char", "vocab_size": len(set(shakespeare[:12_000])), "file": "tokenizer.json"}
    assert m["normalize"] == "none" and m["sources"][0]["documents"] == 1
    tok = load_tokenizer(small_data)
    stream = []
    for split in ("train", "val"):
        info = m["splits"][split]
        assert [s["file"] for s in info["shards"]] == [f"{split}-{i:06d}.tar" for i in range(len(info["shards"]))]
        assert all(s["samples"] == 8 for s in info["shards"][:-1]) and 0 < info["shards"][-1]["samples"] <= 8
        samples = _read_all(small_data, split)
        assert len(samples) == info["samples"] == sum(s["samples"] for s in info["shards"])
        assert info["tokens"] == info["samples"] * 16
        assert [k for k, _ in samples] == [f"{split}-{i:09d}" for i in range(info["samples"])]
        for (_, a), (_, b) in zip(samples, samples[1:]):  # stride seq_len: last target = next first input
            assert a[-1] == b[0]
        tokens = np.concatenate([samples[0][1]] + [t[1:] for _, t in samples[1:]])
        assert all(t.dtype == np.uint16 and t.shape == (17,) for _, t in samples)
        stream.append(tok.decode(tokens.tolist()))
    text = shakespeare[:12_000]
    n_val = int(len(text) * 0.1)
    train_text, val_text = text[: len(text) - n_val], text[len(text) - n_val :]
    assert train_text.startswith(stream[0]) and len(train_text) - len(stream[0]) < 16  # tail dropped
    assert val_text.startswith(stream[1]) and len(val_text) - len(stream[1]) < 16
    assert verify(small_data)["samples"] == m["splits"]["train"]["samples"] + m["splits"]["val"]["samples"]


class _HugeVocab:
    """A stand-in tokenizer whose ids exceed uint16."""

    kind = "fake"
    vocab_size = 70_000

    def encode(self, text):
        return [66_000 + ord(c) % 4_000 for c in text]

    def decode(self, ids):
        raise NotImplementedError

    def save(self, directory):
        return None


def test_uint32_when_vocab_exceeds_uint16(tmp_path, shakespeare):
    src = tmp_path / "in.txt"
    src.write_text(shakespeare[:3000])
    m = prepare_corpus([str(src)], tmp_path / "d", tokenizer=_HugeVocab(), seq_len=32, samples_per_shard=20)
    assert m["dtype"] == "uint32" and m["tokenizer"]["vocab_size"] == 70_000
    samples = _read_all(tmp_path / "d", "train")
    assert samples[0][1].dtype == np.uint32
    assert samples[0][1].tolist() == _HugeVocab().encode(shakespeare[:33])
    assert max(int(t.max()) for _, t in samples) > 65535


def test_sentencepiece_and_text8_prepare(tmp_path, shakespeare):
    src = tmp_path / "in.txt"
    src.write_text(shakespeare[:100_000])
    m = prepare_corpus([str(src)], tmp_path / "sp", tokenizer="sentencepiece", vocab_size=500, seq_len=64, samples_per_shard=50)
    assert m["tokenizer"] == {"kind": "sentencepiece", "vocab_size": 500, "file": "tokenizer.model"}
    tok = load_tokenizer(tmp_path / "sp")
    first = _read_all(tmp_path / "sp", "train")[0][1]
    assert shakespeare.startswith(tok.decode(first.tolist()))
    m = prepare_corpus([str(src)], tmp_path / "t8", tokenizer="char", normalize="text8", seq_len=64)
    assert m["tokenizer"]["vocab_size"] == 27 and m["normalize"] == "text8"
    text = load_tokenizer(tmp_path / "t8").decode(_read_all(tmp_path / "t8", "train")[0][1].tolist())
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz ") and "  " not in text


def test_prepare_errors(tmp_path):
    src = tmp_path / "short.txt"
    src.write_text("a tiny corpus of a few words only, repeated. " * 4)
    with pytest.raises(ValueError, match=r"val split gets \d+ of the corpus's 180 tokens.*seq_len=64 needs 65"):
        prepare_corpus([str(src)], tmp_path / "o", seq_len=64)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        prepare_corpus([str(empty)], tmp_path / "o")
    with pytest.raises(ValueError, match="empty"):
        prepare_corpus([str(empty)], tmp_path / "o", tokenizer="sentencepiece", vocab_size=500)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_corpus([str(tmp_path / "nope.txt")], tmp_path / "o")
    with pytest.raises(ValueError, match="unknown input type .docx"):
        prepare_corpus([str(tmp_path / "x.docx")], tmp_path / "o")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_prepare_again_replaces_old_output(tmp_path, shakespeare):
    src = tmp_path / "in.txt"
    src.write_text(shakespeare[:20_000])
    prepare_corpus([str(src)], tmp_path / "d", seq_len=16, samples_per_shard=8)
    m = prepare_corpus([str(src)], tmp_path / "d", seq_len=16, samples_per_shard=10_000)
    assert sorted(p.name for p in (tmp_path / "d").glob("*.tar")) == ["train-000000.tar", "val-000000.tar"]
    assert len(m["splits"]["train"]["shards"]) == 1


def test_load_manifest_errors(tmp_path, small_data):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**load_manifest(small_data), "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        load_manifest(tmp_path)
