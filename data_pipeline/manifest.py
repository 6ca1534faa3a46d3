"""The data directory's `manifest.json`: reading it with clear errors and verifying its shards."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import DataError, ShardError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
TOKEN_FIELD = "tokens.npy"  # the one field of every sample: a uint16/uint32 array of seq_len + 1 tokens


def sample_key(split: str, index: int) -> str:
    """The WebDataset key of sample `index` of `split` (split-wide numbering)."""
    return f"{split}-{index:09d}"


def load_manifest(data_dir: str | os.PathLike) -> dict:
    """Read and sanity-check `data_dir/manifest.json`."""
    data_dir = Path(data_dir)
    hint = "run `neurograph data prepare --out DIR ...` to create one"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist ({hint})")
    path = data_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} has no {MANIFEST}; it is not a prepared data directory or prepare did not finish ({hint})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}; this version of NeuroGraph reads {FORMAT_VERSION} (prepare the data again)")
    for key in ("tokenizer", "seq_len", "dtype", "splits"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the field {key!r}")
    for split in SPLITS:
        if split not in manifest["splits"]:
            raise ValueError(f"{path} has no {split!r} split")
    return manifest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(data_dir: str | os.PathLike) -> dict:
    """Check every shard's size and sha256 against the manifest and that the tokenizer file exists.

    Returns {"shards", "samples", "bytes"}; raises ShardError naming every bad shard."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    problems: list[str] = []
    tokenizer_file = manifest["tokenizer"].get("file")
    if tokenizer_file and not (data_dir / tokenizer_file).is_file():
        problems.append(f"tokenizer file {tokenizer_file} is missing")
    shards = samples = total = 0
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            shards += 1
            samples += shard["samples"]
            total += shard["bytes"]
            path = data_dir / shard["file"]
            if not path.is_file():
                problems.append(f"{shard['file']}: missing")
                continue
            size = path.stat().st_size
            if size != shard["bytes"]:
                problems.append(f"{shard['file']}: {size} bytes, the manifest says {shard['bytes']} (truncated or replaced)")
            elif sha256_file(path) != shard["sha256"]:
                problems.append(f"{shard['file']}: sha256 mismatch (corrupt)")
    if problems:
        raise ShardError(f"{data_dir}: {len(problems)} bad file(s): " + "; ".join(problems))
    return {"shards": shards, "samples": samples, "bytes": total}
