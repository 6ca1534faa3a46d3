"""Shared fixtures: real corpora from ../shared/data (or the shipped demo corpus), prepared
into real WebDataset shards once per session."""
from __future__ import annotations

import lzma
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def corpus_text(name: str = "shakespeare", chars: int = 300_000) -> str:
    """The first `chars` characters of a shared corpus (the shipped copy for Shakespeare)."""
    path = SHARED_DATA / f"{name}.txt.xz"
    if not path.exists() and name == "shakespeare":
        from neurograph.data_pipeline import DEMO_CORPUS

        path = Path(DEMO_CORPUS)
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read(chars)


@pytest.fixture(scope="session")
def char_data(tmp_path_factory) -> Path:
    """A char-level dataset: seq_len 64, small shards so 2 ranks x 4 rows have enough streams."""
    from neurograph.data_pipeline import prepare_corpus

    root = tmp_path_factory.mktemp("char_data")
    src = root / "corpus.txt"
    src.write_text(corpus_text(chars=200_000))
    out = root / "data"
    prepare_corpus([str(src)], out, tokenizer="char", seq_len=64, val_fraction=0.1, samples_per_shard=32)
    return out


def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite in two pytest-xdist workers (`--dist loadfile --no-loadscope-reorder`:
    each file whole in one worker, so its module fixtures are set up once, files in this order). The Ray
    cluster's file goes first, then the files with slow tests, then the rest: short files fill the end, so
    neither worker ends the run alone for long."""
    ray = {item.path for item in items if "ray_cluster" in getattr(item, "fixturenames", ())}
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in ray, item.path not in slow))  # stable within each class
