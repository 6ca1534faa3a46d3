"""The committed lock (requirements/*.txt) against pyproject.toml and against this environment."""
from __future__ import annotations

import sys

import pytest
from packaging.requirements import Requirement

from neurograph.launch.environment import installed, lock_report
from neurograph.launch.lockfile import (LOCK_DIR, LOCKS, PYPROJECT, read_pins, recorded_digest,
                                        requirements_digest)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_was_compiled_from_this_pyproject(lock):
    assert recorded_digest(LOCK_DIR / lock) == requirements_digest(), \
        f"requirements/{lock} is stale: pyproject.toml's requirements changed; run `make lock`"


def test_digest_follows_the_requirements_not_the_formatting(tmp_path):
    text = PYPROJECT.read_text()
    (tmp_path / "same.toml").write_text(text.replace('"numpy>=1.24,<3",', '"numpy>=1.24,<3",   # a comment'))
    (tmp_path / "other.toml").write_text(text.replace('"numpy>=1.24,<3"', '"numpy>=1.25,<3"'))
    assert requirements_digest(tmp_path / "same.toml") == requirements_digest()
    assert requirements_digest(tmp_path / "other.toml") != requirements_digest()


@pytest.mark.parametrize("lock, extras", [(("cpu.txt",), ("dev", "s3")),
                                          (("cuda.txt", "cuda-kernels.txt"), ("dev", "s3", "gpu"))])
def test_every_requirement_is_pinned_within_its_bounds(lock, extras):
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    pins = {pin.name: pin for name in lock for pin in read_pins(LOCK_DIR / name) if pin.applies()}
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req} is not pinned in {lock}"
        assert req.specifier.contains(pins[name].version, prereleases=True), f"{lock} pins {name}=={pins[name].version}, outside {req}"


def test_cpu_lock_takes_torch_cpu_build_and_no_cuda_package():
    pins = read_pins(LOCK_DIR / "cpu.txt")
    assert [p.version for p in pins if p.name == "torch"] == ["2.13.0+cpu"]
    assert not [p.name for p in pins if p.name.startswith(("nvidia-", "cuda-"))]


def test_this_environment_is_exactly_the_lock():
    """`make install` syncs .venv to this platform's lock: every pin installed at its locked version."""
    import torch

    report = lock_report(cuda=torch.version.cuda is not None, versions=installed())
    assert report["matches_pyproject"] is True
    assert report["departures"] == [], report["departures"]
    versions = {**installed(), "torch": "2.0.0"}
    versions.pop("deepspeed")
    assert sorted(lock_report(cuda=torch.version.cuda is not None, versions=versions)["departures"]) == [
        f"deepspeed: installed nothing, locked {installed()['deepspeed']}",
        f"torch: installed 2.0.0, locked {torch.__version__}"]
