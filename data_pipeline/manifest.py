"""The data directory's `manifest.json`: reading it with clear errors and verifying its shards."""
from __future__ import annotations

import json
import os

import numpy as np

from .errors import DataError, MissingData, ShardError
from .shards import ShardSpec, read_shard
from .storage import exists, join, read_bytes

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 1: one tar member per sample (NeuroGraph 0.1); 2: one [samples, seq_len+1] array per shard
SPLITS = ("train", "val")

__all__ = ["MANIFEST", "FORMAT_VERSION", "SPLITS", "DataError", "ShardError", "load_manifest", "verify"]


def load_manifest(data_dir: str | os.PathLike) -> dict:
    """Read and sanity-check `data_dir/manifest.json` (a local directory or a URL)."""
    hint = "run `neurograph data prepare --out DIR ...` to create one"
    path = join(data_dir, MANIFEST)
    if not exists(data_dir):
        raise MissingData(f"data directory {data_dir} does not exist ({hint})")
    if not exists(path):
        raise MissingData(f"{data_dir} has no {MANIFEST}; it is not a prepared data directory or prepare did not finish ({hint})")
    try:
        manifest = json.loads(read_bytes(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err})") from err
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise DataError(f"{path} has format_version {version!r}; this version of NeuroGraph reads {FORMAT_VERSION}: "
                        f"run `neurograph data prepare` again on the corpus (format 1 stored one tar member per sample)")
    for key in ("tokenizer", "seq_len", "dtype", "splits"):
        if key not in manifest:
            raise DataError(f"{path} lacks the field {key!r}")
    for split in SPLITS:
        if split not in manifest["splits"]:
            raise DataError(f"{path} has no {split!r} split")
    return manifest


def verify(data_dir: str | os.PathLike) -> dict:
    """Read every shard as the loader does: size, sha256, the single token array (no other
    member, no pickle), its shape and dtype, every token id below the vocabulary size; and the
    tokenizer file. Returns {"shards", "samples", "bytes", "tokens"}; raises ShardError naming
    every bad file."""
    manifest = load_manifest(data_dir)
    problems: list[str] = []
    tokenizer_file = manifest["tokenizer"].get("file")
    if tokenizer_file and not exists(join(data_dir, tokenizer_file)):
        problems.append(f"tokenizer file {tokenizer_file} is missing")
    dtype, sample_len = np.dtype(manifest["dtype"]), int(manifest["seq_len"]) + 1
    vocab = int(manifest["tokenizer"]["vocab_size"])
    shards = samples = total = 0
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            spec = ShardSpec(shard["file"], int(shard["samples"]), int(shard["bytes"]), shard["sha256"])
            shards, samples, total = shards + 1, samples + spec.samples, total + spec.bytes
            try:
                read_shard(str(data_dir), spec, dtype, sample_len, vocab)
            except ShardError as err:
                problems.append(str(err))
    if problems:
        raise ShardError(f"{data_dir}: {len(problems)} bad file(s): " + "; ".join(problems))
    return {"shards": shards, "samples": samples, "bytes": total, "tokens": samples * (sample_len - 1)}
