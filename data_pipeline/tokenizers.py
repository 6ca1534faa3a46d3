"""Tokenizers behind one interface: a character vocabulary, a lossless SentencePiece model, and
Hugging Face `tokenizers` models (a byte-level BPE trained here, GPT-2 style, or an existing
local `tokenizer.json`).

Every kind maps `str -> list[int]` and back exactly (`decode(encode(s)) == s`), including
special tokens written in the text: they are reserved ids that never split. `roles` names the
special tokens that play a part (`eos`, `bos`, `pad`, `unk`); `prepare` ends every document with
EOS when there is one, and a character vocabulary with an `unk` token encodes characters it does
not hold as that token (without one, they are an error). A tokenizer saves itself into a data directory and `load_tokenizer(dir)`
reads it back (kind and roles come from the manifest)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Protocol

import numpy as np

from .errors import DataError, MissingData

CHAR_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "hf_tokenizer.json"
ROLES = ("eos", "bos", "pad", "unk")
DEFAULT_EOS = "<|endoftext|>"  # GPT-2's end-of-text token, every kind's default EOS
DEFAULT_UNK = "<unk>"  # the character vocabulary's default stand-in for characters it does not hold


class Tokenizer(Protocol):
    """What prepare, the trainer and generation need from a tokenizer."""

    kind: str
    roles: dict[str, str]  # role -> special token text, e.g. {"eos": "<|endoftext|>"}

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: str | os.PathLike) -> str:
        """Write the tokenizer into `directory`; return the file name written."""
        ...


def role_ids(tok: Tokenizer) -> dict[str, Optional[int]]:
    """{"eos_id": ..., "bos_id": ..., "pad_id": ..., "unk_id": ...}, None where the role is unset."""
    return {f"{role}_id": tok.special_tokens[tok.roles[role]] if role in tok.roles else None for role in ROLES}


def ordered_specials(roles: dict[str, str], user: Iterable[str]) -> list[str]:
    """The special tokens in id order: role tokens (eos, bos, pad, unk) first, then the user's."""
    out: list[str] = []
    for token in [roles[r] for r in ROLES if r in roles] + list(user):
        if not token:
            raise DataError("a special token cannot be empty")
        if token not in out:
            out.append(token)
    return out


class CharTokenizer:
    """One token per character; ids: the special tokens first, then the sorted characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str], specials: Iterable[str] = (), roles: Optional[dict[str, str]] = None):
        self.chars: list[str] = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise DataError("a character vocabulary holds single characters only")
        if not self.chars:
            raise DataError("a character vocabulary needs at least one character")
        self.roles = dict(roles or {})
        self.specials = ordered_specials(self.roles, specials)
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True))) + ")") if self.specials else None

    @classmethod
    def train(cls, texts: Iterable[str], specials: Iterable[str] = (), roles: Optional[dict[str, str]] = None) -> "CharTokenizer":
        """The vocabulary of every character in `texts`."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise DataError("cannot build a character vocabulary from an empty corpus")
        return cls(chars, specials, roles)

    @property
    def vocab_size(self) -> int:
        return len(self.specials) + len(self.chars)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.specials)}

    def _encode_chars(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.minimum(np.searchsorted(self._codepoints, codes), len(self._codepoints) - 1)
        bad = self._codepoints[ids] != codes
        ids = ids.astype(np.int64) + len(self.specials)
        if bad.any():
            if "unk" not in self.roles:
                unknown = sorted({chr(c) for c in codes[bad][:1000]})
                raise DataError(f"characters not in the vocabulary: {unknown!r}")
            ids[bad] = self.special_tokens[self.roles["unk"]]
        return ids

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of `text` (its special tokens aside) outside the vocabulary: what `encode`
        writes as UNK (or refuses without one)."""
        parts = self._split.split(text) if self._split else [text]
        return sorted({c for part in parts if part not in self.special_tokens for c in part} - set(self.chars))

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an int64 array (fast path for long texts)."""
        if self._split is None:
            return self._encode_chars(text)
        special = self.special_tokens
        parts = [np.array([special[p]]) if i % 2 else self._encode_chars(p)
                 for i, p in enumerate(self._split.split(text)) if p]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.specials)
        return "".join(self.specials[i] if i < n else self.chars[i - n] for i in map(int, ids))

    def save(self, directory: str | os.PathLike) -> str:
        data = {"kind": self.kind, "vocab": self.chars, "specials": self.specials, "roles": self.roles}
        (Path(directory) / CHAR_FILE).write_text(json.dumps(data, ensure_ascii=False))
        return CHAR_FILE

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        data = json.loads(Path(path).read_text())
        if data.get("kind") != cls.kind or not isinstance(data.get("vocab"), list):
            raise DataError(f"{path} is not a character tokenizer file")
        return cls(data["vocab"], data.get("specials", ()), data.get("roles"))


class SentencePieceTokenizer:
    """A trained SentencePiece (BPE or unigram) model, trained lossless: identity normalisation,
    whitespace kept as is, byte fallback for unseen characters, no dummy prefix. Special tokens
    are user-defined symbols (ids 1.., after <unk>), so they round-trip as text."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, specials: Iterable[str] = (), roles: Optional[dict[str, str]] = None):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.roles = dict(roles or {})
        self.specials = ordered_specials(self.roles, specials)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int = 8000, model_type: str = "bpe", seed: int = 0,
              specials: Iterable[str] = (), roles: Optional[dict[str, str]] = None,
              max_sentences: int = 2_000_000) -> "SentencePieceTokenizer":
        """Train on an iterator of sentences (lines without their newline). `vocab_size` counts
        the role tokens; the user's special tokens come on top."""
        import sentencepiece as spm

        if model_type not in ("bpe", "unigram"):
            raise DataError(f"sp_model_type must be 'bpe' or 'unigram', got {model_type!r}")
        roles = dict(roles or {})
        symbols = ordered_specials(roles, specials)
        extra = len(symbols) - len(set(roles.values()))
        spm.set_random_generator_seed(seed)
        with tempfile.TemporaryDirectory(prefix="ng-spm-") as tmp:
            prefix = os.path.join(tmp, "sp")
            try:
                spm.SentencePieceTrainer.train(
                    sentence_iterator=iter(s for s in sentences if s), model_prefix=prefix, model_type=model_type,
                    vocab_size=vocab_size + extra, character_coverage=1.0, normalization_rule_name="identity",
                    remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=False,
                    byte_fallback=True, add_dummy_prefix=False, input_sentence_size=max_sentences,
                    shuffle_input_sentence=True, num_threads=max(1, min(os.cpu_count() or 1, 8)), minloglevel=2,
                    unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=symbols,
                )
            except RuntimeError as err:
                raise DataError(f"sentencepiece training failed ({err}); a smaller vocab_size may fit the corpus") from err
            return cls(Path(prefix + ".model").read_bytes(), symbols, roles)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t: self._sp.piece_to_id(t) for t in self.specials}

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> str:
        (Path(directory) / SENTENCEPIECE_FILE).write_bytes(self.model_proto)
        return SENTENCEPIECE_FILE

    @classmethod
    def load(cls, path: str | os.PathLike, specials: Iterable[str] = (),
             roles: Optional[dict[str, str]] = None) -> "SentencePieceTokenizer":
        return cls(Path(path).read_bytes(), specials, roles)

    def __getstate__(self):
        return {"model_proto": self.model_proto, "specials": self.specials, "roles": self.roles}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], state.get("specials", ()), state.get("roles"))


class HFTokenizer:
    """A Hugging Face `tokenizers` model: kind "bpe" (byte-level BPE trained here, GPT-2 style:
    lossless on any text) or "hf" (an existing tokenizer.json). Special tokens are added tokens
    that never split."""

    def __init__(self, json_text: str, kind: str, roles: Optional[dict[str, str]] = None):
        from tokenizers import Tokenizer as _HF

        self.kind, self.roles = kind, dict(roles or {})
        self.json_text = json_text
        self._tok = _HF.from_str(json_text)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, specials: Iterable[str] = (),
                  roles: Optional[dict[str, str]] = None) -> "HFTokenizer":
        """Byte-level BPE of `vocab_size` tokens (the role tokens included; the user's special
        tokens come on top, e.g. 50,257 + <USER> <ASSISTANT> <SYSTEM> <ERROR> = 50,261)."""
        from tokenizers import Tokenizer as _HF, decoders, models, pre_tokenizers, trainers

        roles = dict(roles or {})
        symbols = ordered_specials(roles, specials)
        extra = len(symbols) - len(set(roles.values()))
        tok = _HF(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + extra, special_tokens=symbols, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok.to_str(), "bpe", roles)

    @classmethod
    def from_local(cls, path: str | os.PathLike, specials: Iterable[str] = (),
                   roles: Optional[dict[str, str]] = None) -> "HFTokenizer":
        """An existing tokenizer: a tokenizer.json file or a saved HF tokenizer folder holding one;
        missing special tokens are added."""
        from tokenizers import AddedToken, Tokenizer as _HF

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"--tokenizer hf:{path}: no tokenizer.json there (a Hugging Face `tokenizers` file is needed)")
        try:
            tok = _HF.from_file(str(file))
        except Exception as err:
            raise DataError(f"--tokenizer hf:{path}: cannot read {file} ({err})") from err
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ordered_specials(dict(roles or {}), specials)])
        return cls(tok.to_str(), "hf", roles)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> str:
        (Path(directory) / HF_FILE).write_text(self.json_text)
        return HF_FILE

    def __getstate__(self):
        return {"json_text": self.json_text, "kind": self.kind, "roles": self.roles}

    def __setstate__(self, state):
        self.__init__(state["json_text"], state["kind"], state.get("roles"))


def load_tokenizer(data_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer that `prepare_corpus` saved in `data_dir` (kind and roles from its manifest)."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.json"
    info = json.loads(manifest.read_text())["tokenizer"] if manifest.is_file() else {}
    roles, specials = info.get("roles"), list(info.get("special_tokens", {}))
    if (data_dir / HF_FILE).is_file():
        return HFTokenizer((data_dir / HF_FILE).read_text(), info.get("kind", "hf"), roles)
    if (data_dir / SENTENCEPIECE_FILE).is_file():
        return SentencePieceTokenizer.load(data_dir / SENTENCEPIECE_FILE, specials, roles)
    if (data_dir / CHAR_FILE).is_file():
        return CharTokenizer.load(data_dir / CHAR_FILE)
    raise MissingData(f"no {CHAR_FILE}, {SENTENCEPIECE_FILE} or {HF_FILE} in {data_dir}")
