"""`neurograph doctor`: what a user must know about an environment before a run, and whether every
node of a Ray cluster has the same one.

One report per process: Python, the versions of the packages a run depends on, torch's CUDA, NCCL and
OpenMP, the GPUs, the lock this platform installs from (its sha256, and every pin the environment
departs from), a digest of every installed distribution, the C++ compiler the CPU kernels build
with, and jemalloc. `--ray ADDRESS` runs the same report on every alive node (one task pinned to
each) and names each node whose Python, package versions, lock or environment differ from the
driver's; the exit code is then 1.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Optional

from .lockfile import LOCK_DIR, file_sha256, normalise, read_pins, recorded_digest, requirements_digest

PACKAGES = ("torch", "deepspeed", "ray", "triton", "mamba-ssm", "causal-conv1d", "transformers", "mlflow",
            "pydantic", "webdataset", "sentencepiece", "safetensors", "numpy")
# what must agree between the nodes of one cluster
COMPARED = ("python", "packages", "lock_sha256", "installed")


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed() -> dict[str, str]:
    """Normalised name -> version of every distribution on sys.path (the first one found wins, as
    for imports), less the packages Ray vendors onto its workers' path (ray/thirdparty_files: a
    driver does not see them, and they come with Ray's version)."""
    path = [entry for entry in sys.path if not entry.rstrip("/").endswith("thirdparty_files")]
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=path):
        found.setdefault(normalise(dist.metadata["Name"]), dist.version)
    return found


def lock_report(cuda: bool, versions: dict[str, str]) -> dict[str, Any]:
    """The lock of this platform and how the environment departs from it."""
    path = LOCK_DIR / ("cuda.txt" if cuda else "cpu.txt")
    if not path.exists():
        return {"file": None, "sha256": None, "note": "no lock here (not a source checkout or image)"}
    pins = [pin for pin in read_pins(path) if pin.applies()]
    if cuda and (LOCK_DIR / "cuda-kernels.txt").exists():
        pins += [pin for pin in read_pins(LOCK_DIR / "cuda-kernels.txt") if pin.applies()]
    departures = [f"{pin.name}: installed {versions.get(pin.name, 'nothing')}, locked {pin.version}"
                  for pin in pins if versions.get(pin.name) != pin.version]
    try:
        current = recorded_digest(path) == requirements_digest()
    except (FileNotFoundError, ModuleNotFoundError):  # no pyproject.toml beside it, or no TOML reader
        current = None
    return {"file": str(path), "sha256": file_sha256(path), "matches_pyproject": current, "departures": departures}


def _compiler() -> Optional[str]:
    cxx = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension builds with
    if shutil.which(cxx) is None:
        return None
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else None


def collect() -> dict[str, Any]:
    """This process's report (a plain dict: it travels back from Ray tasks)."""
    import torch

    from .allocator import find_jemalloc

    versions = installed()
    cuda = torch.version.cuda is not None
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}"})
    nccl = None
    if cuda and torch.distributed.is_nccl_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    lock = lock_report(cuda, versions)
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "nccl": nccl,
        "openmp": torch.backends.openmp.is_available(),
        "gpus": gpus,
        "lock": lock,
        "lock_sha256": lock["sha256"],
        "installed": versions,
        "environment_sha256": hashlib.sha256(
            "\n".join(f"{k}=={v}" for k, v in sorted(versions.items())).encode()).hexdigest(),
        "compiler": _compiler(),
        "jemalloc": find_jemalloc(),
    }


def differences(report: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What in `report` departs from `reference`, in the fields that must agree across nodes."""
    found = []
    for field in COMPARED:
        mine, theirs = report.get(field), reference.get(field)
        if field == "packages":
            found += [f"{name} {mine.get(name)} (driver: {theirs.get(name)})"
                      for name in PACKAGES if mine.get(name) != theirs.get(name)]
        elif field == "installed":  # the rest of the environment, beyond the packages named above
            other = sorted(name for name in set(mine) | set(theirs)
                           if mine.get(name) != theirs.get(name) and name not in PACKAGES)
            if other:
                found.append(f"{len(other)} other distributions, e.g. " + ", ".join(
                    f"{name} {mine.get(name)} (driver: {theirs.get(name)})" for name in other[:3]))
        elif mine != theirs:
            found.append(f"{field} {str(mine)[:16]} (driver: {str(theirs)[:16]})")
    return found


def cluster_reports(address: str) -> dict[str, dict[str, Any]]:
    """Node label -> that node's report (or {"error": ...}), one task pinned to each alive node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        task = ray.remote(num_cpus=0)(collect)
        refs = {f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})": task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
            for node in ray.nodes() if node["Alive"]}
        reports = {}
        for label, ref in refs.items():
            try:
                reports[label] = ray.get(ref, timeout=300)
            except Exception as err:  # a node that cannot even run the report differs
                reports[label] = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"}
        return reports
    finally:
        ray.shutdown()
