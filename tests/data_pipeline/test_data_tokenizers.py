"""Tokenizers: lossless round trips on real text, save/load through load_tokenizer."""
import pytest

from data_pipeline.tokenizers import CharTokenizer, SentencePieceTokenizer, load_tokenizer

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
