"""Where data lives: local paths or fsspec URLs (`s3://bucket/prefix`, `https://...`).

Shards and manifests are small whole-file reads and writes, so the pipeline needs only these
few operations. S3 credentials and endpoint come from the usual AWS environment variables
(`AWS_ENDPOINT_URL` for an S3-compatible server)."""
from __future__ import annotations

import glob
import os
from pathlib import Path


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(base: str | os.PathLike, name: str) -> str:
    """`base/name` for a directory path or URL."""
    return f"{str(base).rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


def read_bytes(path: str | os.PathLike) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    import fsspec

    with fsspec.open(str(path), "rb") as f:
        return f.read()


def exists(path: str | os.PathLike) -> bool:
    if not is_url(path):
        return Path(path).exists()
    import fsspec

    fs, target = fsspec.core.url_to_fs(str(path))
    return fs.exists(target)


def open_binary(path: str | os.PathLike):
    """A binary read stream of a local file or URL."""
    if not is_url(path):
        return open(path, "rb")
    import fsspec

    return fsspec.open(str(path), "rb").open()


def expand(patterns: list[str]) -> list[str]:
    """Input paths with local globs and URL globs expanded (sorted, so the order is stable);
    a pattern that matches nothing is kept as is for the caller to report."""
    out: list[str] = []
    for pattern in map(str, patterns):
        if not any(ch in pattern for ch in "*?["):
            out.append(pattern)
            continue
        if is_url(pattern):
            import fsspec

            fs, target = fsspec.core.url_to_fs(pattern)
            protocol = pattern.split("://", 1)[0]
            matches = [f"{protocol}://{m}" for m in sorted(fs.glob(target))]
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
        out.extend(matches or [pattern])
    return out


def upload_directory(local: Path, url: str) -> None:
    """Copy the files of `local` to `url`, `manifest.json` last (its presence marks a complete
    dataset), replacing what is there."""
    import fsspec

    fs, target = fsspec.core.url_to_fs(url)
    files = sorted(p for p in local.iterdir() if p.is_file())
    files.sort(key=lambda p: p.name == "manifest.json")
    for path in files:
        fs.put_file(str(path), f"{target.rstrip('/')}/{path.name}")


def list_names(url_or_dir: str) -> list[str]:
    """File names directly under a directory path or URL ([] when it does not exist)."""
    if not is_url(url_or_dir):
        path = Path(url_or_dir)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    import fsspec

    fs, target = fsspec.core.url_to_fs(url_or_dir)
    if not fs.exists(target):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(target, detail=False))
