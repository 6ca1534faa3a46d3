"""`prepare_corpus`: text inputs -> tokenizer + compact WebDataset shards + `manifest.json`.

The corpus is streamed (memory flat in its size) and tokenized on `workers` processes; pieces
are cut and reassembled in input order, so the output is byte-identical for any worker count.
Documents end with the tokenizer's EOS token (or, without one, a text separator). The token
stream is packed into samples of seq_len + 1 tokens (stride seq_len); consecutive samples form
blocks of SPLIT_BLOCK_SAMPLES, and a seeded systematic sample of the blocks (exactly a
val_fraction of them, spread over the whole corpus) is the validation split.

Everything is written into a staging directory beside the output, verified, and only then
published by renames: a failure at any point leaves an existing dataset as it was."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .errors import DataError
from .manifest import FORMAT_VERSION, MANIFEST, SPLITS, verify
from .shards import write_shard
from .sources import NORMALIZATIONS, check_inputs, iter_corpus, split_name
from .storage import is_url, list_names, upload_directory
from .tokenizers import DEFAULT_EOS, DEFAULT_UNK, CharTokenizer, HFTokenizer, SentencePieceTokenizer, Tokenizer, role_ids

log = logging.getLogger(__name__)

TOKENIZER_KINDS = ("char", "sentencepiece", "bpe")  # and "hf:PATH"
SPLIT_BLOCK_SAMPLES = 32  # samples per unit of the train/val split
TASK_CHARS = 1 << 20  # characters per tokenization task
TRAINING_SENTENCE_CHARS = 1000  # longer lines are cut at spaces for tokenizer training
TRAINING_SENTENCES = 300_000  # size of the seeded sample a subword tokenizer is trained on


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def document_separator(normalize: str) -> str:
    """Text placed after each document when the tokenizer has no EOS token."""
    return " " if normalize == "text8" else "\n\n"


def prepare_corpus(
    inputs: Sequence[str],
    out_dir: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    vocab_size: int = 8000,
    sp_model_type: str = "bpe",
    normalize: str = "none",
    seq_len: int = 256,
    val_fraction: float = 0.05,
    samples_per_shard: int = 4096,
    seed: int = 0,
    jsonl_field: str = "text",
    special_tokens: Sequence[str] = (),
    eos_token: Optional[str] = "auto",
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Prepare `inputs` (paths, globs or URLs) into `out_dir` (a directory or URL); returns the
    manifest. `tokenizer`: "char", "sentencepiece", "bpe" (trained here with `vocab_size`),
    "hf:PATH" (an existing tokenizer.json) or a tokenizer object. `eos_token`: "auto" gives every
    kind DEFAULT_EOS (and char DEFAULT_UNK for characters outside its vocabulary) except under
    normalize="text8", whose 27 symbols are the benchmark's; None: no EOS."""
    _check_arguments(tokenizer, vocab_size, sp_model_type, normalize, seq_len, val_fraction, samples_per_shard, workers)
    inputs = check_inputs([str(p) for p in inputs])
    out = str(out_dir)
    existing = list_names(out)
    if existing and not overwrite:
        raise DataError(f"--out {out} is not empty ({len(existing)} entries, e.g. {existing[0]}); "
                        "pass --overwrite to replace it (the old dataset is kept until the new one is complete)")
    staging = _staging_dir(out)
    try:
        manifest = _prepare_into(staging, inputs, tokenizer, vocab_size, sp_model_type, normalize, seq_len,
                                 val_fraction, samples_per_shard, seed, jsonl_field, special_tokens, eos_token, workers)
        verify(staging)
        _publish(staging, out, existing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _prepare_into(out: Path, inputs, tokenizer, vocab_size, sp_model_type, normalize, seq_len, val_fraction,
                  samples_per_shard, seed, jsonl_field, special_tokens, eos_token, workers) -> dict:
    def corpus() -> Iterator[tuple[str, str, bool]]:
        return iter_corpus(inputs, normalize=normalize, jsonl_field=jsonl_field)

    roles = _roles(tokenizer, eos_token, normalize)
    tok = _build_tokenizer(tokenizer, corpus, normalize, vocab_size, sp_model_type, seed, special_tokens, roles)
    dtype = token_dtype(tok.vocab_size)
    ids = role_ids(tok)
    end_ids = np.asarray([ids["eos_id"]] if ids["eos_id"] is not None else tok.encode(document_separator(normalize)), dtype=np.int64)
    packer = SplitPacker(out, seq_len, samples_per_shard, dtype, val_fraction, seed)
    sources = _encode(tok, corpus(), end_ids, workers, packer, _text_bytes(inputs))
    splits = packer.finish()
    for split in SPLITS:
        if splits[split]["samples"] == 0:
            raise DataError(
                f"the {split} split gets no sample: the corpus holds {packer.samples} samples of seq_len={seq_len} "
                f"in {packer.blocks} blocks of {SPLIT_BLOCK_SAMPLES}; use more text, a smaller --seq-len or "
                f"another --val-fraction (now {val_fraction})")
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"kind": tok.kind, "vocab_size": int(tok.vocab_size), "file": tok.save(out), "roles": tok.roles,
                      "special_tokens": tok.special_tokens, **ids},
        "seq_len": seq_len,
        "dtype": dtype.name,
        "splits": splits,
        "sources": sources,
        "normalize": normalize,
        "document_end": "eos" if ids["eos_id"] is not None else document_separator(normalize),
        "samples_per_shard": samples_per_shard,
        "split_block_samples": SPLIT_BLOCK_SAMPLES,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("%d documents, %d samples (train %d, val %d), vocab %d (%s)", sum(s["documents"] for s in sources),
             packer.samples, splits["train"]["samples"], splits["val"]["samples"], tok.vocab_size, tok.kind)
    return manifest


@dataclass
class SplitPacker:
    """Packs the token stream into samples, deals blocks of samples to train/val and writes
    each split's shards as they fill."""

    out: Path
    seq_len: int
    samples_per_shard: int
    dtype: np.dtype
    val_fraction: float
    seed: int
    samples: int = 0
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rows: dict = field(default_factory=lambda: {s: [] for s in SPLITS})
    shards: dict = field(default_factory=lambda: {s: [] for s in SPLITS})

    def __post_init__(self):
        self.phase = random.Random(self.seed).random()

    @property
    def blocks(self) -> int:
        return -(-self.samples // SPLIT_BLOCK_SAMPLES)

    def is_val(self, block: np.ndarray) -> np.ndarray:
        """Systematic sampling with a seeded phase: exactly a val_fraction of the blocks, evenly spread."""
        f, u = self.val_fraction, self.phase
        return np.floor((block + 1) * f + u) - np.floor(block * f + u) >= 1

    def add(self, tokens: np.ndarray) -> None:
        stream = np.concatenate([self.pending, tokens])
        n = max(0, (len(stream) - 1) // self.seq_len)
        if n == 0:
            self.pending = stream
            return
        index = np.arange(n)[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        samples = stream[index].astype(self.dtype)
        val = self.is_val((self.samples + np.arange(n)) // SPLIT_BLOCK_SAMPLES)
        for split, mask in (("train", ~val), ("val", val)):
            if mask.any():
                self.rows[split].append(samples[mask])
                self._flush(split, final=False)
        self.samples += n
        self.pending = stream[n * self.seq_len :]

    def _flush(self, split: str, final: bool) -> None:
        rows = np.concatenate(self.rows[split]) if self.rows[split] else np.zeros((0, self.seq_len + 1), self.dtype)
        while len(rows) >= self.samples_per_shard or (final and len(rows)):
            self._write(split, rows[: self.samples_per_shard])
            rows = rows[self.samples_per_shard :]
        self.rows[split] = [rows] if len(rows) else []

    def _write(self, split: str, rows: np.ndarray) -> None:
        self.shards[split].append(write_shard(self.out, split, len(self.shards[split]), rows))

    def finish(self) -> dict:
        """Write the last partial shards; the manifest's `splits` entry."""
        out = {}
        for split in SPLITS:
            self._flush(split, final=True)
            samples = sum(s["samples"] for s in self.shards[split])
            out[split] = {"samples": samples, "tokens": samples * self.seq_len, "shards": self.shards[split]}
        return out


def _encode(tok, corpus: Iterator[tuple[str, str, bool]], end_ids: np.ndarray, workers: int, packer: SplitPacker,
            total_bytes: Optional[int]) -> list[dict]:
    """Tokenize the corpus on `workers` processes (in order) into the packer; per-source statistics."""
    sources: dict[str, dict] = {}
    bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="tokenizing", disable=None, leave=False)
    started, tokens = time.monotonic(), 0

    def consume(ids: np.ndarray, task: list) -> None:
        nonlocal tokens
        packer.add(ids)
        tokens += len(ids)
        for path, text, end in task:
            stats = sources.setdefault(path, {"path": path, "documents": 0, "characters": 0})
            stats["characters"] += len(text)
            stats["documents"] += int(end)
        bar.update(sum(len(text.encode("utf-8")) for _, text, _ in task))
        bar.set_postfix(docs=sum(s["documents"] for s in sources.values()), tokens=tokens, refresh=False)

    tasks = _tasks(corpus)
    if workers <= 1:
        for task in tasks:
            consume(encode_task(tok, end_ids, task), task)
    else:
        import multiprocessing as mp

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tok, end_ids)) as pool:
            pending: deque = deque()
            for task in tasks:
                pending.append((pool.apply_async(_worker_encode, (task,)), task))
                if len(pending) >= 2 * workers:  # bounded: memory stays flat
                    result, done = pending.popleft()
                    consume(result.get(), done)
            while pending:
                result, done = pending.popleft()
                consume(result.get(), done)
    bar.close()
    log.info("tokenized %d tokens in %.1f s", tokens, time.monotonic() - started)
    return list(sources.values())


def _tasks(corpus: Iterator[tuple[str, str, bool]]) -> Iterator[list]:
    """Consecutive pieces grouped into tasks of about TASK_CHARS characters."""
    task, size = [], 0
    for item in corpus:
        task.append(item)
        size += len(item[1])
        if size >= TASK_CHARS:
            yield task
            task, size = [], 0
    if task:
        yield task


def encode_task(tok, end_ids: np.ndarray, task: list) -> np.ndarray:
    """Token ids of a task's pieces, `end_ids` after each document's last piece."""
    encode = getattr(tok, "encode_array", None) or (lambda text: np.asarray(tok.encode(text), dtype=np.int64))
    parts = []
    for _, text, end in task:
        if text:
            parts.append(np.asarray(encode(text), dtype=np.int64))
        if end:
            parts.append(end_ids)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
        raise DataError(f"the tokenizer produced ids outside [0, {tok.vocab_size})")
    return ids


_WORKER: dict = {}


def _init_worker(tok, end_ids) -> None:
    _WORKER.update(tok=tok, end_ids=end_ids)


def _worker_encode(task: list) -> np.ndarray:
    return encode_task(_WORKER["tok"], _WORKER["end_ids"], task)


def _roles(tokenizer, eos_token: Optional[str], normalize: str) -> dict[str, str]:
    if not isinstance(tokenizer, str):
        return {}  # a tokenizer object brings its own
    roles = {"unk": DEFAULT_UNK} if tokenizer == "char" and normalize != "text8" else {}
    if eos_token == "auto":
        eos_token = None if normalize == "text8" else DEFAULT_EOS
    return {"eos": eos_token, **roles} if eos_token else roles


def _build_tokenizer(tokenizer, corpus: Callable[[], Iterator], normalize: str, vocab_size: int, sp_model_type: str,
                     seed: int, specials: Sequence[str], roles: dict[str, str]) -> Tokenizer:
    if not isinstance(tokenizer, str):
        return tokenizer
    if tokenizer.startswith("hf:"):
        return HFTokenizer.from_local(tokenizer[3:], specials, roles)
    if tokenizer == "char":
        codes = np.zeros(0, dtype=np.uint32)
        for _, text, _ in tqdm(corpus(), desc="vocabulary", unit="piece", disable=None, leave=False):
            codes = np.union1d(codes, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
        chars = set(map(chr, codes.tolist()))
        if not chars:
            raise DataError("the corpus is empty: the inputs hold no text")
        if not roles.get("eos"):
            chars.update(document_separator(normalize))
        return CharTokenizer(chars, specials, roles)
    sample = training_sample((text for _, text, _ in corpus()), TRAINING_SENTENCES, seed)
    if not sample:
        raise DataError("the corpus is empty: the inputs hold no text")
    log.info("training a %s tokenizer (vocab_size=%d) on %d sampled lines", tokenizer, vocab_size, len(sample))
    if tokenizer == "sentencepiece":
        return SentencePieceTokenizer.train(sample, vocab_size=vocab_size, model_type=sp_model_type, seed=seed,
                                            specials=specials, roles=roles)
    return HFTokenizer.train_bpe(sample, vocab_size=vocab_size, specials=specials, roles=roles)


def training_sample(texts: Iterable[str], size: int, seed: int) -> list[str]:
    """A seeded uniform sample (reservoir) of at most `size` lines of the corpus, long lines cut
    at spaces into pieces of at most TRAINING_SENTENCE_CHARS: bounded memory for any corpus."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for text in texts:
        for line in text.splitlines():
            while line:
                cut = len(line) if len(line) <= TRAINING_SENTENCE_CHARS else (line.rfind(" ", 1, TRAINING_SENTENCE_CHARS) + 1 or TRAINING_SENTENCE_CHARS)
                piece, line = line[:cut], line[cut:]
                if len(sample) < size:
                    sample.append(piece)
                else:
                    j = rng.randrange(seen + 1)
                    if j < size:
                        sample[j] = piece
                seen += 1
    return sample


def _check_arguments(tokenizer, vocab_size, sp_model_type, normalize, seq_len, val_fraction, samples_per_shard, workers):
    if isinstance(tokenizer, str) and tokenizer not in TOKENIZER_KINDS and not tokenizer.startswith("hf:"):
        raise DataError(f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)} or hf:PATH, got {tokenizer!r}")
    if sp_model_type not in ("bpe", "unigram"):
        raise DataError(f"--sp-model-type must be 'bpe' or 'unigram', got {sp_model_type!r}")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if seq_len < 1:
        raise DataError(f"--seq-len must be positive, got {seq_len}")
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard must be positive, got {samples_per_shard}")
    if workers < 1:
        raise DataError(f"--workers must be positive, got {workers}")
    if tokenizer == "sentencepiece" and vocab_size < 300:
        raise DataError(f"--vocab-size {vocab_size} is too small for sentencepiece with byte fallback (use >= 300)")
    if tokenizer == "bpe" and vocab_size < 257:
        raise DataError(f"--vocab-size {vocab_size} is too small for a byte-level BPE (256 bytes + EOS: use >= 257)")


def _text_bytes(inputs: list[str]) -> Optional[int]:
    """Bytes of text to tokenize when known up front (local, uncompressed inputs), for the ETA."""
    if any(is_url(p) or split_name(p)[1] for p in inputs):
        return None
    return sum(os.path.getsize(p) for p in inputs)


def _staging_dir(out: str) -> Path:
    """A fresh directory on the output's file system (a local temporary one for URLs)."""
    if is_url(out):
        return Path(tempfile.mkdtemp(prefix="ng-prepare-"))
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.staging-", dir=parent))


def _publish(staging: Path, out: str, existing: list[str]) -> None:
    """Make the verified staging directory the dataset at `out`, replacing what was there."""
    if is_url(out):
        upload_directory(staging, out)
        import fsspec

        fs, target = fsspec.core.url_to_fs(out)
        for name in set(existing) - {p.name for p in staging.iterdir()}:
            fs.rm(f"{target.rstrip('/')}/{name}", recursive=True)
        return
    target = Path(out)
    if not target.exists():
        os.rename(staging, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.resolve().parent))
    os.rename(target, trash / "data")
    os.rename(staging, target)
    shutil.rmtree(trash, ignore_errors=True)
