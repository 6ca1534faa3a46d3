"""The tokenizer of a prepared data directory as a Hugging Face fast tokenizer
(`PreTrainedTokenizerFast`, saved as tokenizer.json), lossless like the project's own:

- char: one token per character (a WordLevel vocabulary over single characters, fused on decode),
  ids laid out as data_pipeline's CharTokenizer does: its special tokens first, then the characters;
- sentencepiece: the model's pieces and scores (Unigram) or its merges (BPE), whitespace as "▁",
  SentencePiece's word splitting, byte fallback;
- any other kind whose file is a `tokenizers` JSON (byte-level BPE, a local tokenizer.json): that file.

Special tokens come from manifest["tokenizer"]: `special_tokens` (token -> id) and
`bos_id` / `eos_id` / `pad_id` when present. Every kind is a transformers class, so
`AutoTokenizer.from_pretrained(DIR)` needs no trust_remote_code (no tokenizer code is shipped).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPACE = "\u2581"  # SentencePiece's whitespace symbol


def char_tokenizer(chars: list[str], specials: list[str] = ()) -> Tokenizer:
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate([*specials, *chars])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges: every split of a piece into two pieces, ranked by the merged piece's id."""
    merges = [(rank, vocab[piece[:i]], vocab[piece[i:]], piece[:i], piece[i:])
              for piece, rank in vocab.items() for i in range(1, len(piece))
              if piece[:i] in vocab and piece[i:] in vocab]
    return [(left, right) for *_, left, right in sorted(merges)]


def sentencepiece_tokenizer(model_proto: bytes) -> Tokenizer:
    """A lossless SentencePiece model (identity normalisation, no dummy prefix, whitespace-only
    pieces allowed, byte fallback) as a `tokenizers` Tokenizer."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    unk_id = proto.trainer_spec.unk_id
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        model = models.Unigram(pieces, unk_id=unk_id, byte_fallback=True)
    elif proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(vocab), unk_token=pieces[unk_id][0], byte_fallback=True, fuse_unk=True)
    else:
        raise ValueError(f"SentencePiece model type {proto.trainer_spec.model_type} cannot be exported "
                         "(BPE or unigram only)")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", SPACE)
    # SentencePiece's words: a run of whitespace with the characters after it.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{SPACE}*[^{SPACE}]+|{SPACE}+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    control = [p.piece for p in proto.pieces if p.type == p.CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def _backend_tokenizer(data_dir: Path, info: dict) -> Tokenizer:
    path = data_dir / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} is missing")
    if info["kind"] == "char":
        data = json.loads(path.read_text())
        return char_tokenizer(data["vocab"], data.get("specials", []))
    if info["kind"] == "sentencepiece":
        return sentencepiece_tokenizer(path.read_bytes())
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # not a tokenizers JSON file
        raise ValueError(f"tokenizer kind {info['kind']!r} ({path}) is not a Hugging Face tokenizers file: {err}") from None


def hf_tokenizer(data_dir: str | Path, manifest: dict, chat_template: Optional[str] = None) -> PreTrainedTokenizerFast:
    """The data directory's tokenizer as a PreTrainedTokenizerFast with its special tokens."""
    info = manifest["tokenizer"]
    tok = _backend_tokenizer(Path(data_dir), info)
    special = dict(info.get("special_tokens") or {})
    for token, token_id in special.items():
        if tok.token_to_id(token) is None:
            tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        if tok.token_to_id(token) != token_id:
            raise ValueError(f"special token {token!r} has id {token_id} in the manifest but "
                             f"{tok.token_to_id(token)} in the tokenizer")
    roles = {}
    for role in ("bos", "eos", "pad"):
        token_id = info.get(f"{role}_id")
        if token_id is not None:
            roles[f"{role}_token"] = tok.id_to_token(token_id)
    others = [t for t in special if t not in roles.values()]
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, chat_template=chat_template,
                                   additional_special_tokens=others or None, **roles)
