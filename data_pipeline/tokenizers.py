"""Tokenizers: a character vocabulary and a lossless SentencePiece model, behind one interface.

Both map `str -> list[int]` and back exactly (`decode(encode(s)) == s`), save themselves into a
data directory, and are read back with `load_tokenizer(data_dir)`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

CHAR_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"


class Tokenizer(Protocol):
    """What prepare and the trainer need from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: str | os.PathLike) -> str:
        """Write the tokenizer into `directory`; return the file name written."""
        ...


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of the corpus's characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("a character vocabulary holds single characters only")
        if not self.chars:
            raise ValueError("a character vocabulary needs at least one character")
        self._index = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The vocabulary of every character in `texts`."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise ValueError("cannot build a character vocabulary from an empty corpus")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an int64 array (fast path for long texts)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, codes)
        ids = np.minimum(ids, len(self._codepoints) - 1)
        bad = self._codepoints[ids] != codes
        if bad.any():
            unknown = sorted({chr(c) for c in codes[bad][:1000]})
            raise ValueError(f"characters not in the vocabulary: {unknown!r}")
        return ids.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, directory: str | os.PathLike) -> str:
        path = Path(directory) / CHAR_FILE
        path.write_text(json.dumps({"kind": self.kind, "vocab": self.chars}, ensure_ascii=False))
        return CHAR_FILE

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        data = json.loads(Path(path).read_text())
        if data.get("kind") != cls.kind or not isinstance(data.get("vocab"), list):
            raise ValueError(f"{path} is not a character tokenizer file")
        return cls(data["vocab"])


class SentencePieceTokenizer:
    """A trained SentencePiece (BPE or unigram) model, trained lossless: identity normalisation,
    whitespace kept as is, byte fallback for unseen characters, and no dummy prefix so that
    encoding consecutive pieces of a text equals encoding it whole up to piece boundaries."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        vocab_size: int = 8000,
        model_type: str = "bpe",
        seed: int = 0,
        max_sentences: int = 2_000_000,
    ) -> "SentencePieceTokenizer":
        """Train on an iterator of sentences (lines without their newline)."""
        import sentencepiece as spm

        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"sp_model_type must be 'bpe' or 'unigram', got {model_type!r}")
        spm.set_random_generator_seed(seed)
        with tempfile.TemporaryDirectory(prefix="ng-spm-") as tmp:
            prefix = os.path.join(tmp, "sp")
            try:
                spm.SentencePieceTrainer.train(
                    sentence_iterator=iter(s for s in sentences if s),
                    model_prefix=prefix,
                    model_type=model_type,
                    vocab_size=vocab_size,
                    character_coverage=1.0,
                    normalization_rule_name="identity",
                    remove_extra_whitespaces=False,
                    allow_whitespace_only_pieces=True,
                    split_digits=False,
                    byte_fallback=True,
                    add_dummy_prefix=False,
                    input_sentence_size=max_sentences,
                    shuffle_input_sentence=True,
                    num_threads=max(1, min(os.cpu_count() or 1, 8)),
                    minloglevel=2,
                )
            except RuntimeError as err:
                raise ValueError(f"sentencepiece training failed ({err}); a smaller vocab_size may fit the corpus") from err
            return cls(Path(prefix + ".model").read_bytes())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> str:
        (Path(directory) / SENTENCEPIECE_FILE).write_bytes(self.model_proto)
        return SENTENCEPIECE_FILE

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        return cls(Path(path).read_bytes())

    def __getstate__(self):
        return {"model_proto": self.model_proto}

    def __setstate__(self, state):
        self.__init__(state["model_proto"])


def load_tokenizer(data_dir: str | os.PathLike) -> CharTokenizer | SentencePieceTokenizer:
    """The tokenizer that `prepare_corpus` saved in `data_dir`."""
    data_dir = Path(data_dir)
    if (data_dir / SENTENCEPIECE_FILE).is_file():
        return SentencePieceTokenizer.load(data_dir / SENTENCEPIECE_FILE)
    if (data_dir / CHAR_FILE).is_file():
        return CharTokenizer.load(data_dir / CHAR_FILE)
    raise FileNotFoundError(f"no {CHAR_FILE} or {SENTENCEPIECE_FILE} in {data_dir}")
