"""The tokenizer of a prepared data directory as a Hugging Face fast tokenizer
(`PreTrainedTokenizerFast`, saved as tokenizer.json), lossless like the project's own:

- char: one token per character (a WordLevel vocabulary over single characters, fused on decode),
  ids laid out as data_pipeline's CharTokenizer does: its special tokens first, then the characters;
- sentencepiece: the model's pieces and scores (Unigram) or its merges (BPE), whitespace as "▁",
  SentencePiece's word splitting, byte fallback;
- any other kind whose file is a `tokenizers` JSON (byte-level BPE, a local tokenizer.json): that file.

Special tokens come from manifest["tokenizer"]: `special_tokens` (token -> id) and the role ids
`bos_id` / `eos_id` / `pad_id` / `unk_id`. Every export defines BOS, EOS and PAD, as clients
(lm-evaluation-harness, `generate`, pipelines) need them: BOS and PAD are the EOS token unless the
manifest names their own, as GPT-2 does. UNK is the manifest's (char), SentencePiece's own piece, or
none for byte-level vocabularies, which need none. Data without an EOS (prepared before every kind
reserved one, or normalize=text8) or a char vocabulary without UNK get `<|endoftext|>` / `<unk>`
appended after their vocabulary: the export grows the model's embedding rows with zeros for them
and their logits are -inf (`NeuroGraphConfig.trained_vocab_size`). Every kind is a transformers class, so loading it
needs no tokenizer code (`AutoTokenizer.from_pretrained(DIR, trust_remote_code=False)`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from neurograph.data_pipeline.tokenizers import DEFAULT_EOS, DEFAULT_UNK

SPACE = "\u2581"  # SentencePiece's whitespace symbol


def char_tokenizer(specials: list[str], chars: list[str], appended: list[str], unk: Optional[str]) -> Tokenizer:
    """One token per character, ids in order: `specials`, `chars`, `appended` (special tokens the
    export adds); characters outside `chars` become `unk` (a special or appended token)."""
    vocab = {t: i for i, t in enumerate([*specials, *chars, *appended])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk) if unk else models.WordLevel(vocab))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [*specials, *appended]])
    return tok


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges: every split of a piece into two pieces, ranked by the merged piece's id."""
    merges = [(rank, vocab[piece[:i]], vocab[piece[i:]], piece[:i], piece[i:])
              for piece, rank in vocab.items() for i in range(1, len(piece))
              if piece[:i] in vocab and piece[i:] in vocab]
    return [(left, right) for *_, left, right in sorted(merges)]


def sentencepiece_tokenizer(model_proto: bytes) -> tuple[Tokenizer, str]:
    """A lossless SentencePiece model (identity normalisation, no dummy prefix, whitespace-only
    pieces allowed, byte fallback) as a `tokenizers` Tokenizer, and its UNK piece."""
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
    return tok, pieces[unk_id][0]


def _backend_tokenizer(data_dir: Path, info: dict) -> tuple[Tokenizer, dict[str, int]]:
    """The data directory's tokenizer as a `tokenizers` Tokenizer with the special tokens every export
    has (EOS; UNK for char), appended after its vocabulary when the data lack them (data prepared
    before every kind reserved them, or under normalize=text8), and its role ids: bos, eos, pad
    (falling back to EOS, as GPT-2's), unk (the manifest's or the backend's own; absent for
    byte-level vocabularies, which need none)."""
    path = data_dir / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} is missing")
    appended = [] if info.get("eos_id") is not None else [DEFAULT_EOS]
    if info["kind"] == "char":
        data = json.loads(path.read_text())
        specials = data.get("specials", [])
        if info.get("unk_id") is None:
            appended.append(DEFAULT_UNK)
        unk = DEFAULT_UNK if info.get("unk_id") is None else specials[info["unk_id"]]
        tok = char_tokenizer(specials, data["vocab"], appended, unk)
    elif info["kind"] == "sentencepiece":
        tok, unk = sentencepiece_tokenizer(path.read_bytes())
    else:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # not a tokenizers JSON file
            raise ValueError(f"tokenizer kind {info['kind']!r} ({path}) is not a Hugging Face tokenizers file: "
                             f"{err}") from None
        unk = getattr(tok.model, "unk_token", None)
    if info["kind"] != "char":
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in appended])
    ids = {role: info.get(f"{role}_id") for role in ("bos", "eos", "pad", "unk")}
    ids["eos"] = tok.token_to_id(DEFAULT_EOS) if ids["eos"] is None else ids["eos"]
    ids["bos"] = ids["eos"] if ids["bos"] is None else ids["bos"]
    ids["pad"] = ids["eos"] if ids["pad"] is None else ids["pad"]
    ids["unk"] = tok.token_to_id(unk) if unk is not None else None
    return tok, {role: i for role, i in ids.items() if i is not None}


def hf_tokenizer(data_dir: str | Path, manifest: dict,
                 chat_template: Optional[str] = None) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    """The data directory's tokenizer as a PreTrainedTokenizerFast with its special tokens, and
    its role ids ({"bos": id, "eos": id, "pad": id[, "unk": id]}). Its ids at or above
    manifest["tokenizer"]["vocab_size"] were appended here."""
    info = manifest["tokenizer"]
    tok, ids = _backend_tokenizer(Path(data_dir), info)
    special = dict(info.get("special_tokens") or {})
    for token, token_id in special.items():
        if tok.token_to_id(token) is None:
            tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        if tok.token_to_id(token) != token_id:
            raise ValueError(f"special token {token!r} has id {token_id} in the manifest but "
                             f"{tok.token_to_id(token)} in the tokenizer")
    roles = {f"{role}_token": tok.id_to_token(i) for role, i in ids.items()}
    others = [t for t in special if t not in roles.values()]
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, chat_template=chat_template,
                                   additional_special_tokens=others or None, **roles), ids
