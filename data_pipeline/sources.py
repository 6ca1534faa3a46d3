"""Documents from input files or URLs: .txt (the whole file is one document), .jsonl (one
document per line, a string field) and .parquet (a string column), each optionally compressed
with .xz, .gz, .bz2 or .zst; plus the optional Text8 normalisation.

Inputs are streamed: a .txt document arrives in pieces of about a megabyte cut after a newline,
so memory stays flat in the corpus size."""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import DataError, MissingData
from .storage import exists, expand, is_url, open_binary as open_stored

FORMATS = (".txt", ".jsonl", ".parquet")
COMPRESSIONS = (".xz", ".gz", ".bz2", ".zst")
NORMALIZATIONS = ("none", "text8")
PIECE_CHARS = 1 << 20  # characters per piece of a long document

_NON_AZ = re.compile(r"[^a-z]+")


def text8_normalize(text: str) -> str:
    """Lower-case, map every run of characters outside a-z to one space (27 symbols)."""
    return _NON_AZ.sub(" ", text.lower())


def split_name(path: str | os.PathLike) -> tuple[str, str | None]:
    """(format, compression) of a path from its suffixes, e.g. ('.jsonl', '.gz')."""
    name = str(path).rsplit("/", 1)[-1]
    suffixes = [s.lower() for s in Path(name).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in FORMATS:
        raise DataError(
            f"{path}: unknown input type {''.join(Path(name).suffixes) or '(no extension)'}; "
            f"supported: {', '.join(FORMATS)}, optionally compressed with {', '.join(COMPRESSIONS)}")
    return fmt, compression


def open_binary(path: str | os.PathLike, compression: str | None) -> BinaryIO:
    """The decompressed bytes of a local file or URL."""
    raw = open_stored(path)
    if compression is None:
        return raw
    if compression == ".xz":
        return lzma.open(raw, "rb")
    if compression == ".gz":
        return gzip.open(raw, "rb")
    if compression == ".bz2":
        return bz2.open(raw, "rb")
    try:
        import zstandard
    except ImportError:
        raw.close()
        raise DataError(f"{path}: reading .zst needs the 'zstandard' package (pip install zstandard)") from None
    return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)


def iter_pieces(path: str | os.PathLike, jsonl_field: str = "text", parquet_column: str = "text") -> Iterator[tuple[str, bool]]:
    """(text, ends a document) pieces of one input, in order."""
    fmt, compression = split_name(path)
    if not exists(path):
        raise MissingData(f"input file {path} does not exist")
    try:
        with open_binary(path, compression) as raw:
            if fmt == ".txt":
                yield from _text_pieces(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            elif fmt == ".jsonl":
                yield from ((doc, True) for doc in _jsonl_documents(path, io.TextIOWrapper(raw, encoding="utf-8"), jsonl_field))
            else:
                # parquet needs random access: decompress into memory rather than seek in a compressed stream
                source = raw if compression is None else io.BytesIO(raw.read())
                yield from ((doc, True) for doc in _parquet_documents(path, source, parquet_column))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from err
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError, OSError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err


def iter_documents(path: str | os.PathLike, jsonl_field: str = "text", parquet_column: str = "text") -> Iterator[str]:
    """Whole documents of one input (pieces joined: for small inputs and tests)."""
    parts: list[str] = []
    for text, end in iter_pieces(path, jsonl_field, parquet_column):
        parts.append(text)
        if end:
            yield "".join(parts)
            parts = []


def _text_pieces(text: io.TextIOBase) -> Iterator[tuple[str, bool]]:
    """A text stream as one document in pieces of about PIECE_CHARS, cut after a newline."""
    carry = ""
    while block := text.read(PIECE_CHARS):
        block = carry + block
        cut = block.rfind("\n") + 1
        if cut == 0 and len(block) < 4 * PIECE_CHARS:  # no newline yet: wait for one, within bounds
            carry = block
            continue
        cut = cut or len(block)
        if cut:
            yield block[:cut], False
        carry = block[cut:]
    yield carry, True


def _jsonl_documents(path, lines: io.TextIOBase, field: str) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err})") from err
        if not isinstance(record, dict) or field not in record:
            raise DataError(f"{path}:{number}: no field {field!r} (choose one with --jsonl-field)")
        value = record[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{path}:{number}: field {field!r} is {type(value).__name__}, not a string")
        yield value


def _parquet_documents(path, raw: BinaryIO, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(raw)
    if column not in table.schema_arrow.names:
        raise DataError(f"{path}: no column {column!r}; columns: {', '.join(table.schema_arrow.names)}")
    for batch in table.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value


def iter_corpus(inputs: list[str], normalize: str = "none", jsonl_field: str = "text",
                parquet_column: str = "text") -> Iterator[tuple[str, str, bool]]:
    """(source, piece, ends a document) over all inputs, normalised; empty documents are skipped."""
    if normalize not in NORMALIZATIONS:
        raise DataError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    for path in inputs:
        pieces = iter_pieces(path, jsonl_field=jsonl_field, parquet_column=parquet_column)
        started = False
        for text, end in (_text8(pieces) if normalize == "text8" else pieces):
            if text or (end and started):
                yield str(path), text, end
            started = not end and (started or bool(text))


def _text8(pieces: Iterator[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
    """Text8-normalised pieces, single spaces across piece boundaries, none at a document's ends."""
    pending, at_start = "", True  # pending: "" or the " " held back from the last piece
    for text, end in pieces:
        text = text8_normalize(text)
        pending += text.lstrip(" ") if at_start or pending else text
        body = pending.rstrip(" ")
        if body or end:
            yield body, end
            at_start = False
        pending = "" if end else pending[len(body):]
        at_start = at_start or end


def check_inputs(inputs: list[str]) -> list[str]:
    """Expand globs and check every input before any work: a known type, present, non-empty,
    readable, UTF-8 text (not binary). Returns the expanded list; raises DataError naming the file."""
    if not inputs:
        raise DataError("no input files given (--input)")
    paths = expand(inputs)
    for path in paths:
        fmt, compression = split_name(path)
        if not exists(path):
            raise MissingData(f"input file {path} does not exist")
        if not is_url(path) and Path(path).is_dir():
            raise DataError(f"input {path} is a directory; give its files (a glob such as {path}/*.txt works)")
        try:
            with open_binary(path, compression) as raw:
                head = raw.read(1 << 16)
        except (lzma.LZMAError, gzip.BadGzipFile, EOFError, OSError) as err:
            raise DataError(f"input file {path} cannot be read ({err})") from err
        if not head.strip():
            raise DataError(f"input file {path} is empty")
        if fmt != ".parquet":
            if b"\x00" in head:
                raise DataError(f"input file {path} is binary, not {fmt[1:]} text")
            try:
                head.decode("utf-8")
            except UnicodeDecodeError as err:
                if err.start < len(head) - 4:  # not just a character cut at the end of the sample
                    raise DataError(f"input file {path} is not UTF-8 text (byte {err.start})") from None
    return paths
