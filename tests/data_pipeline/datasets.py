"""Synthetic prepared datasets whose samples are numbered: sample i of a split holds the token i
(uint32) in every position, so a batch says exactly which samples it holds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neurograph.data_pipeline.manifest import FORMAT_VERSION, MANIFEST
from neurograph.data_pipeline.shards import write_shard

SEQ_LEN = 4
VOCAB = 1 << 20


def numbered_dataset(root: Path, train_counts: list[int], val_counts: list[int] = (3,)) -> Path:
    """A data directory with shards of the given sample counts; sample ids are split-wide."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, counts in (("train", train_counts), ("val", val_counts)):
        shards, first = [], 0
        for index, n in enumerate(counts):
            rows = np.repeat(np.arange(first, first + n, dtype=np.uint32)[:, None], SEQ_LEN + 1, axis=1)
            shards.append(write_shard(root, split, index, rows))
            first += n
        splits[split] = {"samples": first, "tokens": first * SEQ_LEN, "shards": shards}
    manifest = {"format_version": FORMAT_VERSION, "seq_len": SEQ_LEN, "dtype": "uint32", "splits": splits,
                "tokenizer": {"kind": "synthetic", "vocab_size": VOCAB, "file": None}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def ids(batch) -> list[int]:
    """Sample ids of a micro-batch's rows (-100 for padding rows)."""
    return [int(r[0]) for r in batch]
