"""Documents from input files: .txt (the whole file is one document), .jsonl (one document per
line, a string field) and .parquet (a string column), each optionally compressed with
.xz, .gz, .bz2 or .zst; plus the optional Text8 normalisation."""
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

FORMATS = (".txt", ".jsonl", ".parquet")
COMPRESSIONS = (".xz", ".gz", ".bz2", ".zst")
NORMALIZATIONS = ("none", "text8")

_NON_AZ = re.compile(r"[^a-z]+")


def text8_normalize(text: str) -> str:
    """Lower-case, map every run of characters outside a-z to one space (27 symbols)."""
    return _NON_AZ.sub(" ", text.lower())


def split_name(path: str | os.PathLike) -> tuple[str, str | None]:
    """(format, compression) of a path from its suffixes, e.g. ('.jsonl', '.gz')."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in FORMATS:
        raise ValueError(
            f"{path}: unknown input type {''.join(Path(path).suffixes) or '(no extension)'}; "
            f"supported: {', '.join(FORMATS)}, optionally compressed with {', '.join(COMPRESSIONS)}")
    return fmt, compression


def open_binary(path: str | os.PathLike, compression: str | None) -> BinaryIO:
    """The decompressed bytes of `path`."""
    if compression is None:
        return open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise ValueError(f"{path}: reading .zst needs the 'zstandard' package (pip install zstandard)") from None
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


def iter_documents(path: str | os.PathLike, jsonl_field: str = "text", parquet_column: str = "text") -> Iterator[str]:
    """Yield the documents of one input file."""
    path = Path(path)
    fmt, compression = split_name(path)
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")
    try:
        with open_binary(path, compression) as raw:
            if fmt == ".txt":
                yield io.TextIOWrapper(raw, encoding="utf-8").read()
            elif fmt == ".jsonl":
                yield from _jsonl_documents(path, io.TextIOWrapper(raw, encoding="utf-8"), jsonl_field)
            else:
                # parquet needs random access: decompress into memory rather than seek in a compressed stream
                source = raw if compression is None else io.BytesIO(raw.read())
                yield from _parquet_documents(path, source, parquet_column)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError, OSError) as err:
        raise ValueError(f"{path}: cannot read ({err})") from err


def _jsonl_documents(path: Path, lines: io.TextIOBase, field: str) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: invalid JSON ({err})") from err
        if not isinstance(record, dict) or field not in record:
            raise ValueError(f"{path}:{number}: no field {field!r} (choose one with --jsonl-field)")
        value = record[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{path}:{number}: field {field!r} is {type(value).__name__}, not a string")
        yield value


def _parquet_documents(path: Path, raw: BinaryIO, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(raw)
    if column not in table.schema_arrow.names:
        raise ValueError(f"{path}: no column {column!r}; columns: {', '.join(table.schema_arrow.names)}")
    for batch in table.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value


def iter_corpus(
    inputs: list[str], normalize: str = "none", jsonl_field: str = "text", parquet_column: str = "text"
) -> Iterator[tuple[str, str]]:
    """Yield (source path, document) over all inputs, normalised; empty documents are skipped."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    for path in inputs:
        for doc in iter_documents(path, jsonl_field=jsonl_field, parquet_column=parquet_column):
            if normalize == "text8":
                doc = text8_normalize(doc).strip(" ")
            if doc:
                yield str(path), doc


def check_inputs(inputs: list[str]) -> None:
    """Fail early (before any work) on a missing file or an unknown type."""
    if not inputs:
        raise ValueError("no input files given")
    for path in inputs:
        split_name(path)
        if not Path(path).is_file():
            raise ValueError(f"input file {path} does not exist")
