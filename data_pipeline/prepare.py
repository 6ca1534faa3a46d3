"""`prepare_corpus`: text files -> tokenizer + WebDataset tar shards of fixed-length samples +
`manifest.json` (written last, so a directory with a manifest is complete)."""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from .manifest import FORMAT_VERSION, MANIFEST, SPLITS, TOKEN_FIELD, sample_key, sha256_file
from .sources import NORMALIZATIONS, check_inputs, iter_corpus
from .tokenizers import CHAR_FILE, SENTENCEPIECE_FILE, CharTokenizer, SentencePieceTokenizer, Tokenizer

log = logging.getLogger(__name__)

_ENCODE_CHUNK = 1 << 20  # characters per encode call (progress granularity)
_MAX_TRAINING_SENTENCE = 2000  # characters; sentencepiece skips longer sentences


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def document_separator(normalize: str) -> str:
    """Text placed between consecutive documents in the token stream."""
    return " " if normalize == "text8" else "\n\n"


def prepare_corpus(
    inputs: list[str],
    out_dir: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    vocab_size: int = 8000,
    sp_model_type: str = "bpe",
    normalize: str = "none",
    seq_len: int = 256,
    val_fraction: float = 0.05,
    samples_per_shard: int = 512,
    seed: int = 0,
    jsonl_field: str = "text",
) -> dict:
    """Tokenize `inputs` into one stream, split it by position into train (first 1-val_fraction)
    and val (the rest), cut each split into samples of seq_len+1 tokens with stride seq_len,
    and write shards, tokenizer and manifest to `out_dir`. Returns the manifest.

    `tokenizer` is "char", "sentencepiece" (trained here with `vocab_size`, `sp_model_type`)
    or an already built tokenizer object."""
    inputs = [str(p) for p in inputs]
    _check_arguments(inputs, tokenizer, sp_model_type, normalize, seq_len, val_fraction, samples_per_shard, vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_output(out)

    def corpus() -> Iterator[tuple[str, str]]:
        return iter_corpus(inputs, normalize=normalize, jsonl_field=jsonl_field)

    separator = document_separator(normalize)
    tok = _build_tokenizer(tokenizer, corpus, separator, vocab_size, sp_model_type, seed)
    dtype = token_dtype(tok.vocab_size)
    tokens, sources = _encode_corpus(tok, corpus(), separator, dtype)
    if tokens.size == 0:
        raise ValueError(f"the corpus is empty: no text in {', '.join(inputs)}")
    log.info("%d documents, %d tokens (vocab %d, %s)", sum(s["documents"] for s in sources), tokens.size, tok.vocab_size, tok.kind)

    n_val = int(tokens.size * val_fraction)
    parts = {"train": tokens[: tokens.size - n_val], "val": tokens[tokens.size - n_val :]}
    for split in SPLITS:
        if parts[split].size < seq_len + 1:
            raise ValueError(
                f"the {split} split gets {parts[split].size} of the corpus's {tokens.size} tokens, but one sample "
                f"of seq_len={seq_len} needs {seq_len + 1} tokens: use more text, a smaller seq_len "
                f"or a different val_fraction (now {val_fraction})")

    tokenizer_file = tok.save(out)
    splits = {split: write_split(parts[split], out, split, seq_len, samples_per_shard, dtype) for split in SPLITS}
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"kind": tok.kind, "vocab_size": int(tok.vocab_size), "file": tokenizer_file},
        "seq_len": seq_len,
        "dtype": dtype.name,
        "splits": splits,
        "sources": sources,
        "normalize": normalize,
        "document_separator": separator,
        "samples_per_shard": samples_per_shard,
        "val_fraction": val_fraction,
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(out, manifest)
    return manifest


def write_split(
    tokens: np.ndarray, out: Path, split: str, seq_len: int, samples_per_shard: int, dtype: np.dtype
) -> dict:
    """Cut `tokens` into samples of seq_len+1 tokens (stride seq_len, tail dropped) and write
    `{split}-%06d.tar` shards; return the split's manifest entry."""
    import webdataset as wds

    n_samples = (tokens.size - 1) // seq_len if tokens.size > seq_len else 0
    if n_samples == 0:
        raise ValueError(f"the {split} split has {tokens.size} tokens; one sample of seq_len={seq_len} needs {seq_len + 1}")
    tokens = np.ascontiguousarray(tokens, dtype=dtype)
    pattern = str(out / f"{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, maxsize=float("inf"), verbose=0, encoder=False, mtime=0) as sink:
        for i in tqdm(range(n_samples), desc=f"writing {split}", unit="sample", disable=None, leave=False):
            sample = tokens[i * seq_len : i * seq_len + seq_len + 1]
            sink.write({"__key__": sample_key(split, i), TOKEN_FIELD: _npy_bytes(sample)})
    shards = []
    for index, start in enumerate(range(0, n_samples, samples_per_shard)):
        path = out / (f"{split}-%06d.tar" % index)
        shards.append({
            "file": path.name,
            "samples": min(samples_per_shard, n_samples - start),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        })
    log.info("%s: %d samples in %d shards", split, n_samples, len(shards))
    return {"samples": n_samples, "tokens": n_samples * seq_len, "shards": shards}


def write_manifest(out: Path, manifest: dict) -> None:
    """Atomically write `manifest.json` (temp file + os.replace)."""
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_arguments(inputs, tokenizer, sp_model_type, normalize, seq_len, val_fraction, samples_per_shard, vocab_size):
    if isinstance(tokenizer, str) and tokenizer not in ("char", "sentencepiece"):
        raise ValueError(f"tokenizer must be 'char' or 'sentencepiece', got {tokenizer!r}")
    if sp_model_type not in ("bpe", "unigram"):
        raise ValueError(f"sp_model_type must be 'bpe' or 'unigram', got {sp_model_type!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    if tokenizer == "sentencepiece" and vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for sentencepiece with byte fallback (use >= 300)")
    check_inputs(inputs)


def _remove_previous_output(out: Path) -> None:
    """Drop what an earlier prepare wrote here, the manifest first."""
    for name in (MANIFEST, MANIFEST + ".tmp", CHAR_FILE, SENTENCEPIECE_FILE):
        (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        for old in out.glob(f"{split}-*.tar"):
            old.unlink()


def _build_tokenizer(tokenizer, corpus, separator: str, vocab_size: int, sp_model_type: str, seed: int) -> Tokenizer:
    if not isinstance(tokenizer, str):
        return tokenizer
    if tokenizer == "char":
        chars: set[str] = set()
        documents = 0
        for _, doc in tqdm(corpus(), desc="vocabulary", unit="doc", disable=None, leave=False):
            chars.update(doc)
            documents += 1
        if not chars:
            raise ValueError("the corpus is empty: the inputs hold no text")
        if documents > 1:
            chars.update(separator)
        return CharTokenizer(chars)
    if next(corpus(), None) is None:
        raise ValueError("the corpus is empty: the inputs hold no text")
    log.info("training a sentencepiece %s model, vocab_size=%d", sp_model_type, vocab_size)
    sentences = _training_sentences(doc for _, doc in corpus())
    return SentencePieceTokenizer.train(sentences, vocab_size=vocab_size, model_type=sp_model_type, seed=seed)


def _training_sentences(documents: Iterable[str]) -> Iterator[str]:
    """Lines of the documents, long lines cut at spaces into pieces sentencepiece accepts."""
    for doc in documents:
        for line in doc.splitlines():
            while len(line) > _MAX_TRAINING_SENTENCE:
                cut = line.rfind(" ", 1, _MAX_TRAINING_SENTENCE)
                cut = cut if cut > 0 else _MAX_TRAINING_SENTENCE
                yield line[:cut]
                line = line[cut:]
            if line:
                yield line


def _encode_corpus(tok: Tokenizer, corpus: Iterator[tuple[str, str]], separator: str, dtype: np.dtype):
    """One token array for all documents (joined by `separator`) and per-source statistics."""
    encode = getattr(tok, "encode_array", None) or (lambda text: np.asarray(tok.encode(text), dtype=np.int64))
    sep_ids = None
    pieces: list[np.ndarray] = []
    sources: dict[str, dict] = {}
    bar = tqdm(desc="tokenizing", unit="char", unit_scale=True, disable=None, leave=False)
    for path, doc in corpus:
        stats = sources.setdefault(path, {"path": path, "documents": 0, "characters": 0})
        if pieces:
            sep_ids = encode(separator).astype(dtype) if sep_ids is None else sep_ids
            pieces.append(sep_ids)
        for chunk in _chunks(doc):
            ids = encode(chunk)
            if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(dtype).max):
                raise ValueError(f"token ids out of range for {dtype.name}")
            pieces.append(ids.astype(dtype))
            bar.update(len(chunk))
        stats["documents"] += 1
        stats["characters"] += len(doc)
    bar.close()
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    return tokens, list(sources.values())


def _chunks(text: str) -> Iterator[str]:
    """`text` in pieces of about _ENCODE_CHUNK characters, cut after a newline where possible."""
    start = 0
    while start < len(text):
        end = start + _ENCODE_CHUNK
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline >= start else end
        else:
            end = len(text)
        yield text[start:end]
        start = end
