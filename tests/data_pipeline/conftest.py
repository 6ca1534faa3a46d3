"""Shared fixtures: real text from the shipped demo corpus and /work/shared/data, small prepared dirs."""
from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from neurograph.data_pipeline import DEMO_CORPUS, prepare_corpus

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def read_xz(path, chars: int) -> str:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read(chars)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    """~300 KB of real text (the corpus shipped in the package)."""
    return read_xz(DEMO_CORPUS, 300_000)


@pytest.fixture(scope="session")
def other_text() -> str:
    """Text from a different corpus (unseen characters for a tokenizer trained on Shakespeare);
    like the other shared corpora it is required: a missing file fails, naming it, never skips."""
    return read_xz(SHARED_DATA / "factbook.txt.xz", 100_000)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, shakespeare) -> Path:
    """Char-level data dir: seq_len 16, 8 samples per shard -> ~85 train shards, ~10 val shards."""
    root = tmp_path_factory.mktemp("small")
    src = root / "in.txt"
    src.write_text(shakespeare[:12_000], encoding="utf-8")
    out = root / "data"
    prepare_corpus([str(src)], out, tokenizer="char", seq_len=16, val_fraction=0.1, samples_per_shard=8)
    return out
