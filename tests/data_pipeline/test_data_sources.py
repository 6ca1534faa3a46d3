"""Input formats, compression and the Text8 normalisation."""
import bz2
import gzip
import json
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neurograph.data_pipeline.sources import iter_corpus, iter_documents, text8_normalize

DOCS = ["First document.\nWith two lines é.\n", "Second: {\"json\"} 漢字", "third"]


def _write(path, data: bytes):
    opener = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wb") as f:
        f.write(data)
    return path


def _jsonl(field="text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(DOCS)).encode()


def _parquet() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": DOCS + [None], "id": [0, 1, 2, 3]}), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("compression", ["", ".xz", ".gz", ".bz2"])
def test_formats_and_compressions(tmp_path, compression):
    txt = _write(tmp_path / f"a.txt{compression}", DOCS[0].encode())
    assert list(iter_documents(txt)) == [DOCS[0]]
    jsonl = _write(tmp_path / f"a.jsonl{compression}", _jsonl())
    assert list(iter_documents(jsonl)) == DOCS
    parquet = _write(tmp_path / f"a.parquet{compression}", _parquet())
    assert list(iter_documents(parquet)) == DOCS


def test_jsonl_field_and_errors(tmp_path):
    path = _write(tmp_path / "b.jsonl", _jsonl("content"))
    assert list(iter_documents(path, jsonl_field="content")) == DOCS
    with pytest.raises(ValueError, match=r"b.jsonl:1: no field 'text'"):
        list(iter_documents(path))


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown input type .csv"):
        list(iter_documents(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="does not exist"):
        list(iter_documents(tmp_path / "missing.txt.gz"))


def test_zst_without_zstandard_is_clear(tmp_path):
    try:
        import zstandard  # noqa: F401
    except ImportError:
        path = _write(tmp_path / "c.txt.zst", b"whatever")
        with pytest.raises(ValueError, match="zstandard"):
            list(iter_documents(path))
    else:
        path = tmp_path / "c.txt.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(b"zstd text"))
        assert list(iter_documents(path)) == ["zstd text"]


def test_text8_normalisation(tmp_path, shakespeare):
    out = text8_normalize(shakespeare)
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz ")
    assert "  " not in out
    assert text8_normalize("It's 2 o'clock,\n\nMR.  Smith!") == "it s o clock mr smith "
    path = _write(tmp_path / "d.txt", "Hello, World!\n".encode())
    items = list(iter_corpus([str(path)], normalize="text8"))
    assert "".join(t for _, t, _ in items) == "hello world" and [e for _, _, e in items][-1] is True
    assert {p for p, _, _ in items} == {str(path)} and sum(e for _, _, e in items) == 1


def test_long_text_streams_in_pieces_that_rejoin_exactly(tmp_path, shakespeare, monkeypatch):
    import neurograph.data_pipeline.sources as sources

    monkeypatch.setattr(sources, "PIECE_CHARS", 1000)  # many pieces from a small file
    path = _write(tmp_path / "long.txt.gz", shakespeare.encode())
    pieces = list(sources.iter_pieces(path))
    assert len(pieces) > 100 and all(end is False for _, end in pieces[:-1]) and pieces[-1][1] is True
    assert all(text.endswith("\n") for text, _ in pieces[:-1])  # cut after newlines
    assert "".join(text for text, _ in pieces) == shakespeare
    normalized = "".join(t for _, t, _ in iter_corpus([str(path)], normalize="text8"))
    assert normalized == text8_normalize(shakespeare).strip(" ")
