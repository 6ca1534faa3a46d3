"""Tokenizers: lossless round trips on real text, save/load through load_tokenizer."""
import pytest

from neurograph.data_pipeline.tokenizers import CharTokenizer, SentencePieceTokenizer, load_tokenizer

ODD = "  two  spaces\n\n\ttab, trailing space \r\nunicode: é ß 漢字 🙂\x00 end"


def test_char_round_trip_and_save_load(tmp_path, shakespeare):
    tok = CharTokenizer.train([shakespeare])
    assert tok.kind == "char" and tok.vocab_size == len(set(shakespeare))
    assert tok.chars == sorted(set(shakespeare))
    ids = tok.encode(shakespeare)
    assert len(ids) == len(shakespeare) and max(ids) < tok.vocab_size
    assert tok.decode(ids) == shakespeare
    assert tok.save(tmp_path) == "tokenizer.json"
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode(shakespeare) == ids


def test_char_unknown_character_is_an_error(shakespeare):
    tok = CharTokenizer.train([shakespeare])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("漢")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_lossless_round_trip(tmp_path, shakespeare, other_text, model_type):
    tok = SentencePieceTokenizer.train(shakespeare.splitlines(), vocab_size=800, model_type=model_type)
    assert tok.kind == "sentencepiece" and tok.vocab_size == 800
    for text in (shakespeare[:50_000], other_text[:50_000], ODD):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # pieces compress real text
    assert len(tok.encode(shakespeare[:50_000])) < 50_000 * 0.6
    assert tok.save(tmp_path) == "tokenizer.model"
    again = load_tokenizer(tmp_path)
    assert isinstance(again, SentencePieceTokenizer) and again.encode(ODD) == tok.encode(ODD)


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(tmp_path)


SPECIALS = ["<USER>", "<ASSISTANT>", "<SYSTEM>", "<ERROR>"]
CHAT = "<SYSTEM> be brief\n<USER> What is  2+2?<|endoftext|><ASSISTANT> four 🙂<ERROR>\x00"


def test_special_tokens_never_split_and_round_trip_in_every_kind(tmp_path, shakespeare):
    from neurograph.data_pipeline.tokenizers import HFTokenizer

    roles = {"eos": "<|endoftext|>"}
    lines = shakespeare[:60_000].splitlines()
    kinds = [CharTokenizer.train([shakespeare[:60_000] + CHAT], SPECIALS, roles),
             SentencePieceTokenizer.train(lines, vocab_size=500, specials=SPECIALS, roles=roles),
             HFTokenizer.train_bpe(lines, vocab_size=500, specials=SPECIALS, roles=roles)]
    for tok in kinds:
        special = tok.special_tokens
        assert list(special) == ["<|endoftext|>"] + SPECIALS
        ids = tok.encode(CHAT)
        assert tok.decode(ids) == CHAT
        for token, i in special.items():
            assert ids.count(i) == CHAT.count(token) and tok.encode(token) == [i]
    assert kinds[1].vocab_size == 504 and kinds[2].vocab_size == 504  # --vocab-size holds EOS, user tokens on top


def test_existing_hf_tokenizer_gets_missing_specials(tmp_path, shakespeare):
    from neurograph.data_pipeline.tokenizers import HFTokenizer

    base = HFTokenizer.train_bpe(shakespeare[:30_000].splitlines(), vocab_size=400)
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "tokenizer.json").write_text(base.json_text)
    tok = HFTokenizer.from_local(tmp_path / "saved", SPECIALS, {"eos": "<|endoftext|>"})
    assert tok.kind == "hf" and tok.vocab_size == 405 and tok.decode(tok.encode(CHAT)) == CHAT
    assert tok.encode("First Citizen") == base.encode("First Citizen")  # the existing vocabulary is kept
    with pytest.raises(ValueError, match="no tokenizer.json"):
        HFTokenizer.from_local(tmp_path)
