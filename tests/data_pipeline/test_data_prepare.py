"""prepare_corpus: compact shards, the seeded block sample for validation, EOS between documents,
byte-identical output for any worker count, atomic publishing; verify and load_manifest."""
import io
import json
import random
import shutil
import tarfile

import numpy as np
import pytest

from neurograph.data_pipeline import DataError, ShardError, iter_split, load_manifest, load_tokenizer, prepare_corpus, verify
from neurograph.data_pipeline.prepare import SPLIT_BLOCK_SAMPLES


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _samples(data_dir, split):
    return [t for _, t in iter_split(data_dir, split)]


def test_compact_shards_and_seeded_validation_blocks(small_data, shakespeare):
    m = load_manifest(small_data)
    assert m["format_version"] == 2 and m["dtype"] == "uint16" and m["seq_len"] == 16
    assert m["tokenizer"]["kind"] == "char" and m["tokenizer"]["vocab_size"] == len(set(shakespeare[:12_000])) + 2  # EOS, UNK
    train, val = _samples(small_data, "train"), _samples(small_data, "val")
    n = len(train) + len(val)
    # the validation split is the documented seeded systematic sample of blocks, spread over the corpus
    blocks = np.arange(n) // SPLIT_BLOCK_SAMPLES
    u, f = random.Random(m["seed"]).random(), m["val_fraction"]
    is_val = np.floor((blocks + 1) * f + u) - np.floor(blocks * f + u) >= 1
    assert len(val) == is_val.sum() > 0 and np.flatnonzero(is_val)[0] < n // 2
    stream, t, v = [], iter(train), iter(val)
    for flag in is_val:
        stream.append(next(v) if flag else next(t))
    text = load_tokenizer(small_data).decode(np.concatenate([stream[0]] + [s[1:] for s in stream[1:]]).tolist())
    source = shakespeare[:12_000] + "<|endoftext|>"  # the document ends with EOS
    assert source.startswith(text) and len(source) - len(text) < 16  # every token once, in order; tail dropped
    for shard in m["splits"]["train"]["shards"][:-1]:
        assert shard["samples"] == 8
    verify(small_data)


def test_payload_fraction_of_default_shards(tmp_path, shakespeare):
    m = prepare_corpus([_write(tmp_path / "in.txt", shakespeare)], tmp_path / "d", seq_len=64)
    shards = m["splits"]["train"]["shards"]
    assert shards[0]["samples"] == 4096
    payload = sum(s["samples"] for s in shards) * 65 * 2
    assert payload / sum(s["bytes"] for s in shards) >= 0.95
    import webdataset as wds  # a standard WebDataset tar: one sample, one tokens.npy field

    sample = next(iter(wds.WebDataset(str(tmp_path / "d" / shards[0]["file"]), shardshuffle=False).decode()))
    assert sample["tokens.npy"].shape == (4096, 65)


def test_documents_end_with_eos_and_splits_are_byte_identical_for_any_worker_count(tmp_path, shakespeare):
    docs = [shakespeare[i : i + 3000] for i in range(0, 150_000, 3000)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare_corpus([str(src)], out, tokenizer="bpe", vocab_size=600, seq_len=64, samples_per_shard=100,
                       workers=workers)
        outs[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert outs[1] == outs[2]
    m = load_manifest(tmp_path / "w1")
    eos = m["tokenizer"]["eos_id"]
    assert m["tokenizer"]["special_tokens"] == {"<|endoftext|>": eos} and m["document_end"] == "eos"
    tokens = np.concatenate([s[:-1] for s in _samples(tmp_path / "w1", "train")])
    assert (tokens == eos).sum() > 30  # 50 documents, ~5% of them in val
    tok = load_tokenizer(tmp_path / "w1")
    first = tok.decode(tokens[: int(np.flatnonzero(tokens == eos)[0]) + 1].tolist())
    assert first == docs[0] + "<|endoftext|>" or "<|endoftext|>" not in first[:-13]


def test_char_workers_identical_and_text8(tmp_path, shakespeare):
    src = _write(tmp_path / "in.txt", shakespeare[:100_000])
    a = prepare_corpus([src], tmp_path / "a", seq_len=32, samples_per_shard=50, workers=1)
    b = prepare_corpus([src], tmp_path / "b", seq_len=32, samples_per_shard=50, workers=2)
    assert a == b and all((tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()
                          for s in a["splits"]["train"]["shards"])
    m = prepare_corpus([src], tmp_path / "t8", normalize="text8", seq_len=64)
    assert m["tokenizer"]["vocab_size"] == 27
    text = load_tokenizer(tmp_path / "t8").decode(_samples(tmp_path / "t8", "train")[0].tolist())
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz ") and "  " not in text


class _HugeVocab:
    """A stand-in tokenizer whose ids exceed uint16."""

    kind, roles, special_tokens, vocab_size = "fake", {}, {}, 70_000

    def encode(self, text):
        return [66_000 + ord(c) % 4_000 for c in text]

    def save(self, directory):
        return None


def test_uint32_when_vocab_exceeds_uint16(tmp_path, shakespeare):
    m = prepare_corpus([_write(tmp_path / "in.txt", shakespeare[:3000])], tmp_path / "d", tokenizer=_HugeVocab(),
                       seq_len=32, samples_per_shard=20, val_fraction=0.3)
    assert m["dtype"] == "uint32"
    first = _samples(tmp_path / "d", "train")[0]
    stream = _HugeVocab().encode(shakespeare[:3000])
    assert first.dtype == np.uint32 and first.tolist() in [stream[k : k + 33] for k in range(0, 3000, 32)]


def test_failed_prepare_keeps_the_old_dataset(tmp_path, shakespeare):
    out = tmp_path / "d"
    src = _write(tmp_path / "in.txt", shakespeare[:20_000])
    before = prepare_corpus([src], out, seq_len=16)
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        prepare_corpus([src], out, seq_len=16)
    empty = _write(tmp_path / "empty.txt", "")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    bad_jsonl = _write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": broken\n')
    for inputs, message in (([str(tmp_path / "nope.txt")], "does not exist"), ([empty], "is empty"),
                            ([str(binary)], "is binary"), ([bad_jsonl], r"bad.jsonl:2: invalid JSON"),
                            ([src], "val split gets no sample")):
        kwargs = {"seq_len": 4000} if message.startswith("val") else {"seq_len": 16}
        with pytest.raises(DataError, match=message):
            prepare_corpus(inputs, out, overwrite=True, **kwargs)
        assert load_manifest(out) == before and verify(out)["samples"] > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind
    again = prepare_corpus([src], out, seq_len=32, overwrite=True)
    assert load_manifest(out) == again != before


def _corrupt(data_dir, how):
    shard = data_dir / load_manifest(data_dir)["splits"]["train"]["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    if how == "flip":
        raw[700] ^= 0x04
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    elif how in ("range", "pickle"):  # rewrite the shard consistently, so only the content check can object
        if how == "range":
            tokens = np.full((8, 17), 60_000, dtype=np.uint16)
            payload = io.BytesIO()
            np.lib.format.write_array(payload, tokens)
            members = [(shard.name[:-4] + ".tokens.npy", payload.getvalue())]
        else:
            import pickle

            members = [(shard.name[:-4] + ".tokens.npy", raw[1024:1200]), (shard.name[:-4] + ".extra.pyd", pickle.dumps({"x": 1}))]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(bytes(data)))
        raw = out.getvalue()
        manifest = load_manifest(data_dir)
        import hashlib

        entry = manifest["splits"]["train"]["shards"][1]
        entry.update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        (data_dir / "manifest.json").write_text(json.dumps(manifest))
    shard.write_bytes(bytes(raw))
    return shard.name


@pytest.mark.parametrize("how,reason", [("flip", "fails its sha256 check"), ("truncate", "bytes but the manifest says"),
                                        ("range", "token id 60000 >= vocab_size"), ("pickle", "only the one member")])
def test_verify_catches_every_kind_of_damage(small_data, tmp_path, how, reason):
    data = shutil.copytree(small_data, tmp_path / "copy")
    name = _corrupt(data, how)
    with pytest.raises(ShardError, match=f"{name}.*{reason}"):
        verify(data)


def test_load_manifest_errors(tmp_path, small_data):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**load_manifest(small_data), "format_version": 1}))
    with pytest.raises(DataError, match="format_version 1.*run `neurograph data prepare` again"):
        load_manifest(tmp_path)
