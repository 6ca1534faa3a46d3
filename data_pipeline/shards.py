"""One shard: a standard WebDataset tar holding a single member `{key}.tokens.npy`, an array of
[samples, seq_len + 1] token ids (uint16 or uint32). One member per shard keeps the payload
above 99% of the bytes, and `webdataset`/`wids` read it as one sample with a `tokens.npy` field.

`read_shard` is the only way samples leave a shard: it checks size and sha256 against the
manifest before anything is used, accepts nothing but that one plain `.npy` member (never a
pickle), and checks shape, dtype and the token range."""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ShardError
from .storage import join, read_bytes

TOKEN_FIELD = "tokens.npy"


@dataclass(frozen=True)
class ShardSpec:
    """What the manifest promises about one shard."""

    file: str
    samples: int
    bytes: int
    sha256: str


def shard_key(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def shard_file(split: str, index: int) -> str:
    return shard_key(split, index) + ".tar"


def shard_bytes(key: str, tokens: np.ndarray) -> bytes:
    """The tar bytes of a shard holding `tokens` [samples, sample_len]; identical input gives
    identical bytes (fixed mtime, owner and mode)."""
    payload = io.BytesIO()
    np.lib.format.write_array(payload, np.ascontiguousarray(tokens), allow_pickle=False)
    data = payload.getvalue()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"{key}.{TOKEN_FIELD}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_shard(directory, split: str, index: int, tokens: np.ndarray) -> dict:
    """Write shard `index` of `split` into a local directory; its manifest entry."""
    data = shard_bytes(shard_key(split, index), tokens)
    (Path(directory) / shard_file(split, index)).write_bytes(data)
    return {"file": shard_file(split, index), "samples": len(tokens), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def read_shard(data_dir: str, spec: ShardSpec, dtype: np.dtype, sample_len: int, vocab_size: int) -> np.ndarray:
    """The verified token array [spec.samples, sample_len] of one shard (a read-only view of
    the file's bytes); any problem raises ShardError naming the file."""
    path = join(data_dir, spec.file)
    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        raise ShardError(f"shard {spec.file} is missing ({path})") from None
    except OSError as err:
        raise ShardError(f"cannot read shard {spec.file} ({path}): {err}") from err
    if len(raw) != spec.bytes:
        raise ShardError(f"shard {spec.file} is {len(raw)} bytes but the manifest says {spec.bytes} (truncated or replaced)")
    if hashlib.sha256(raw).hexdigest() != spec.sha256:
        raise ShardError(f"shard {spec.file} fails its sha256 check (corrupt)")
    tokens = _token_array(raw, spec, dtype)
    if tokens.shape != (spec.samples, sample_len):
        raise ShardError(f"shard {spec.file} holds an array of shape {list(tokens.shape)}, "
                         f"the manifest says [{spec.samples}, {sample_len}]")
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ShardError(f"shard {spec.file} has token id {int(tokens.max())} >= vocab_size {vocab_size}")
    return tokens


def _token_array(raw: bytes, spec: ShardSpec, dtype: np.dtype) -> np.ndarray:
    """Parse the tar and its single .npy member without unpickling anything."""
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
        expected = spec.file[: -len(".tar")] + "." + TOKEN_FIELD
        if len(members) != 1 or members[0].name != expected or not members[0].isfile():
            names = [m.name for m in members]
            raise ShardError(f"shard {spec.file} holds {names}; only the one member {expected!r} is allowed")
        member = members[0]
        npy = io.BytesIO(raw[member.offset_data : member.offset_data + member.size])
        version = np.lib.format.read_magic(npy)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, stored = header(npy)
    except ShardError:
        raise
    except Exception as err:  # tar or npy header damage
        raise ShardError(f"shard {spec.file} is not a readable token shard: {type(err).__name__}: {err}") from err
    if stored != dtype or fortran or len(shape) != 2:
        raise ShardError(f"shard {spec.file} holds a {'Fortran-order ' if fortran else ''}{stored} array of "
                         f"shape {list(shape)}; expected C-order {dtype} [samples, tokens]")
    count = shape[0] * shape[1]
    start = member.offset_data + npy.tell()
    if start + count * dtype.itemsize > member.offset_data + member.size:
        raise ShardError(f"shard {spec.file}: the array is shorter than its header says")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(shape)
