"""Corpus preparation (tokenizers, WebDataset shards, manifest) and the streaming token loader."""
from pathlib import Path

from .loader import StreamingTokenLoader, iter_split_once
from .manifest import ShardError, load_manifest, verify
from .prepare import prepare_corpus
from .tokenizers import CharTokenizer, SentencePieceTokenizer, load_tokenizer

DEMO_CORPUS = str(Path(__file__).resolve().parent / "corpora" / "shakespeare.txt.xz")

__all__ = [
    "DEMO_CORPUS", "CharTokenizer", "SentencePieceTokenizer", "ShardError", "StreamingTokenLoader",
    "iter_split_once", "load_manifest", "load_tokenizer", "prepare_corpus", "verify",
]
