"""Corpus preparation (tokenizers, WebDataset shards, manifest) and the streaming token loader."""
from pathlib import Path

from .errors import DataError, MissingData, ShardError
from .loader import IGNORE_INDEX, StreamingTokenLoader, iter_split
from .manifest import load_manifest, verify
from .prepare import prepare_corpus
from .tokenizers import CharTokenizer, HFTokenizer, SentencePieceTokenizer, load_tokenizer

DEMO_CORPUS = str(Path(__file__).resolve().parent / "corpora" / "shakespeare.txt.xz")

__all__ = [
    "DEMO_CORPUS", "IGNORE_INDEX", "CharTokenizer", "DataError", "HFTokenizer", "MissingData", "SentencePieceTokenizer",
    "ShardError", "StreamingTokenLoader", "iter_split", "load_manifest", "load_tokenizer", "prepare_corpus", "verify",
]
