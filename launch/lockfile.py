"""The committed lock of the whole environment: requirements/*.txt, compiled by uv (`make lock`).

One lock per platform, each resolved once for Linux and CPython 3.10-3.12 (uv's universal mode):
- `cpu.txt`: torch's CPU build and everything else (`dev` and `s3` extras included): what
  `make install` puts in .venv on a machine without CUDA, what CI and the CPU image run;
- `cuda.txt`: torch with CUDA, Triton and the same set; `cuda-kernels.txt` pins mamba-ssm and
  causal-conv1d apart, since they compile on the node against the installed torch
  (`--no-build-isolation`) after the rest is in place.
Each lock starts with the digest of the pyproject.toml requirements it was compiled from, so a
stale lock is caught (tests/launch/test_lockfile.py) instead of installing something else.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO / "requirements"
PYPROJECT = REPO / "pyproject.toml"
TORCH_VERSION = "2.13.0"
LOWEST_PYTHON = "3.10"
DIGEST_LINE = "# pyproject-digest: "
# torch's CUDA build depends on these; its CPU build on none of them (same list otherwise)
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-)")
BUILT_ON_NODE = ("mamba-ssm", "causal-conv1d")
LOCKS = ("cpu.txt", "cuda.txt", "cuda-kernels.txt")


def requirements_digest(pyproject: Path = PYPROJECT) -> str:
    """sha256 of what a lock is compiled from: requires-python, the dependencies and extras,
    and uv's settings in pyproject.toml (formatting and comments do not count)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    spec = {"requires-python": project.get("requires-python"), "dependencies": project.get("dependencies", []),
            "optional-dependencies": project.get("optional-dependencies", {}),
            "uv": data.get("tool", {}).get("uv", {}), "torch": TORCH_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    marker: Optional[str]

    def applies(self) -> bool:
        """Whether this pin is for the running interpreter and platform."""
        if self.marker is None:
            return True
        from packaging.markers import Marker

        return Marker(self.marker).evaluate()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> list[Pin]:
    """The `name==version [; marker]` lines of a lock."""
    pins = []
    for line in path.read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        requirement, _, marker = line.partition(";")
        name, _, version = requirement.strip().partition("==")
        name = name.split("[")[0]
        pins.append(Pin(normalise(name), version.strip(), marker.strip() or None))
    return pins


def recorded_digest(path: Path) -> Optional[str]:
    first = path.read_text().split("\n", 1)[0]
    return first[len(DIGEST_LINE):].strip() if first.startswith(DIGEST_LINE) else None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _uv_compile(extras: list[str], uv: str, previous: list[Path]) -> str:
    """One universal resolution; the pins of the `previous` locks are kept where they still satisfy
    pyproject.toml (uv prefers what its output file already pins), so adding a requirement does not
    move every other package to its newest release."""
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "torch.txt"
        constraint.write_text(f"torch=={TORCH_VERSION}\n")
        raw = Path(tmp) / "lock.txt"
        raw.write_text("".join(re.sub(r"(?m)^torch==(\S+)\+cpu", r"torch==\1", path.read_text())
                               for path in previous if path.exists()))
        cmd = [uv, "pip", "compile", str(PYPROJECT), *[f"--extra={e}" for e in extras], "--universal",
               f"--python-version={LOWEST_PYTHON}", f"--constraint={constraint}", f"--output-file={raw}",
               "--custom-compile-command=make lock", "--no-annotate", "--quiet"]
        subprocess.run(cmd, check=True, cwd=REPO)
        return raw.read_text()


def _split(text: str, keep) -> tuple[str, str]:
    """(lines whose package `keep` accepts, the other requirement lines)"""
    kept, dropped = [], []
    for line in text.splitlines():
        is_pin = bool(line) and line[0] not in "# "
        (kept if not is_pin or keep(normalise(line.split("==")[0])) else dropped).append(line)
    return "\n".join(kept) + "\n", "\n".join(dropped) + "\n"


def compile_locks(uv: str = "uv") -> None:
    """Write requirements/{cpu,cuda,cuda-kernels}.txt from pyproject.toml (needs the package index)."""
    header = DIGEST_LINE + requirements_digest() + "\n"
    LOCK_DIR.mkdir(exist_ok=True)
    cuda = _uv_compile(["dev", "s3", "gpu"], uv, [LOCK_DIR / "cuda.txt", LOCK_DIR / "cuda-kernels.txt"])
    cuda, kernels = _split(cuda, lambda name: name not in BUILT_ON_NODE)
    # The CPU lock is the same resolution without the CUDA build's own dependencies: torch's CPU
    # build requires exactly its CUDA build's list minus the nvidia-*/cuda-* packages (checked
    # against 2.13.0's wheels), and uv cannot resolve +cpu for 3.10/3.12 from PyPI alone.
    cpu, _ = _split(_uv_compile(["dev", "s3"], uv, [LOCK_DIR / "cpu.txt"]), lambda name: not CUDA_ONLY.match(name))
    cpu, found = re.subn(rf"^torch=={re.escape(TORCH_VERSION)}(?= |$)", f"torch=={TORCH_VERSION}+cpu", cpu, flags=re.M)
    if found != 1:
        raise RuntimeError(f"the CPU lock does not pin torch=={TORCH_VERSION}")
    (LOCK_DIR / "cpu.txt").write_text(header + cpu)
    (LOCK_DIR / "cuda.txt").write_text(header + cuda)
    (LOCK_DIR / "cuda-kernels.txt").write_text(
        header + "# built on the node against cuda.txt's torch: uv pip install --no-build-isolation --no-deps -r\n"
        + kernels.strip() + "\n")


if __name__ == "__main__":
    compile_locks(*sys.argv[1:2])
