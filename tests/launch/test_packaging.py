"""NeuroGraph as installed: its modules live under `neurograph.` (the folders stay at the root of the
checkout, pyproject.toml's package-dir maps them), so Hugging Face's top-level `kernels` package, which
transformers installs, stays importable; and a wheel built from the checkout carries every module and
data file, and runs the demo in an environment of its own."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from neurograph.trainer.checkpoint import check_checkpoint, tag_for

from ..conftest import REPO, corpus_text
from ..trainer.runs import read_metrics

BIN = Path(sys.executable).parent  # the environment running the tests (.venv/bin)

# folder of the checkout -> import name; nothing of the project is a top-level package
LAYOUT = {folder: f"neurograph.{folder}"
          for folder in ("model", "kernels", "trainer", "data_pipeline", "launch", "configs")}

WHERE = """
import json, sys
import neurograph.kernels.selective_scan as scan
import kernels
print(json.dumps({"scan": scan.__file__, "kernels": kernels.__file__, "get_kernel": hasattr(kernels, "get_kernel"),
                  "path0": sys.path[0]}))
"""


def clean_env() -> dict:
    """The environment without the variables that would put (or keep) the checkout on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}


def assert_hugging_face_kernels(found: dict) -> None:
    assert "site-packages" in Path(found["kernels"]).parts and found["get_kernel"], \
        f"`import kernels` is not Hugging Face's package: {found['kernels']}"


def test_namespace_leaves_hugging_face_kernels_alone(tmp_path):
    # outside the checkout: the project's kernels under neurograph., Hugging Face's at the top level
    out = subprocess.run([sys.executable, "-c", WHERE], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    assert Path(found["scan"]).resolve() == (REPO / "kernels" / "selective_scan" / "__init__.py").resolve()
    assert_hugging_face_kernels(found)

    # in the checkout, `python -c` puts it first on sys.path: its kernels/ (no __init__.py) must not win
    out = subprocess.run([sys.executable, "-c", WHERE], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    assert found["path0"] == "", "the checkout is not on sys.path: this check would prove nothing"
    assert_hugging_face_kernels(found)

    # the installed command, from outside the checkout: prepare a small char dataset, train the demo config
    neurograph = str(BIN / "neurograph")
    (tmp_path / "corpus.txt").write_text(corpus_text(chars=50_000))
    prepared = subprocess.run([neurograph, "data", "prepare", "--input", "corpus.txt", "--out", "data",
                               "--seq-len", "64"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                              timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    done = subprocess.run([neurograph, "train", "--config", str(REPO / "configs" / "demo.yaml"), "data.path=data",
                           "data.seq_len=64", "trainer.run_dir=run", "trainer.max_steps=3", "trainer.num_processes=1",
                           "trainer.log_every=1", "trainer.eval_every=0", "trainer.eval_batches=2",
                           "trainer.checkpoint_every=0", "tracking.enabled=false", "model.n_layer=1",
                           "model.d_model=32", "model.n_head=2", "model.d_ff=64"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert re.search(r"step +3/3 ", done.stderr), done.stderr[-4000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]


def uv() -> str:
    """`make install` puts uv in .venv/uv, outside the environment it manages."""
    path = BIN.parent / "uv" / "bin" / "uv"
    found = str(path) if path.exists() else shutil.which("uv")
    assert found, f"no uv ({path} or on PATH): run `make install`"
    return found


def torch_sources() -> list[str]:
    """Where the lock's torch CPU build comes from, as the Makefile's UV_SOURCES: the folders of
    PIP_FIND_LINKS, or TORCH_INDEX_URL."""
    sources = [arg for folder in os.environ.get("PIP_FIND_LINKS", "").split() for arg in ("--find-links", folder)]
    if os.environ.get("TORCH_INDEX_URL"):
        sources += ["--extra-index-url", os.environ["TORCH_INDEX_URL"], "--index-strategy", "unsafe-best-match"]
    if not sources:
        reason = "no source of torch's CPU build (2.13.0+cpu): set PIP_FIND_LINKS or TORCH_INDEX_URL"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sources


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of the working tree. Built from a copy: setuptools builds in the source folder (build/,
    *.egg-info), whose stale build/lib would also leak files the package list no longer names."""
    junk = {".git", ".venv", "build", "dist", "runs", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache",
            ".ruff_cache"}
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=lambda folder, names: [
        n for n in names if n in junk or n.endswith((".egg-info", ".pyc")) or (Path(folder) == REPO and n == "data")])
    # In an isolated build environment, as `pip install .` or `uv build` do for a user (setuptools from
    # build-system.requires: from uv's cache, offline too, once it holds them). Without a cache or a package
    # index that fails: then the lock's setuptools in this environment (--no-build-isolation) builds it.
    out = tmp_path / "dist"
    cmd = [uv(), "build", "--wheel", "--out-dir", str(out), str(src)]
    built = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        isolated = built.stderr[-2000:]
        built = subprocess.run([*cmd, "--no-build-isolation", "--python", sys.executable], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, isolated + "\n--no-build-isolation:\n" + built.stderr[-3000:]
    (wheel,) = out.glob("neurograph-*.whl")
    return wheel


def check_wheel_contents(wheel: Path, src: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    strays = sorted(n for n in names
                    if not n.startswith("neurograph/") and not re.match(r"neurograph-[^/]+\.dist-info/", n))
    assert not strays, f"top-level files or packages besides neurograph/: {strays[:20]}"
    # every module and data file of the six folders, under its import name
    expected = {f"neurograph/{folder}/{p.relative_to(src / folder).as_posix()}"
                for folder in LAYOUT for p in (src / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(expected - names)
    assert not missing, f"checkout files missing from the wheel (pyproject.toml's packages, package-data): {missing}"
    assert "neurograph/configs/demo.yaml" in names
    assert any(re.fullmatch(r"neurograph/data_pipeline/corpora/[^/]+\.xz", n) for n in names)
    assert any(re.fullmatch(r"neurograph/kernels/[^/]+/cpu\.cpp", n) for n in names)
    assert {"neurograph/model/modeling_neurograph.py", "neurograph/model/configuration_neurograph.py"} <= names


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo(tmp_path):
    sources = torch_sources()
    wheel = build_wheel(tmp_path)
    check_wheel_contents(wheel, tmp_path / "src")

    venv = tmp_path / "venv"
    try:
        subprocess.run([uv(), "venv", str(venv), "--python", sys.executable], check=True, capture_output=True,
                       timeout=120)
        python = str(venv / "bin" / "python")
        # the lock, exactly, and the wheel (its dependencies are all pinned there): seconds from uv's cache
        installed = subprocess.run([uv(), "pip", "install", "--python", python, *sources, "-r",
                                    str(REPO / "requirements" / "cpu.txt"), str(wheel)],
                                   capture_output=True, text=True, timeout=900)
        assert installed.returncode == 0, installed.stderr[-4000:]

        home = tmp_path / "elsewhere"  # outside the checkout: only the wheel provides neurograph
        home.mkdir()
        where = "import neurograph.launch.cli as cli, kernels; print(cli.__file__, kernels.__file__, " \
                "hasattr(kernels, 'get_kernel'))"
        out = subprocess.run([python, "-c", where], cwd=home, env=clean_env(), capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        cli, kernels, get_kernel = out.stdout.split()
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        assert Path(cli).resolve() == (site / "neurograph" / "launch" / "cli.py").resolve()
        assert Path(kernels).resolve() == (site / "kernels" / "__init__.py").resolve() and get_kernel == "True"

        # the demo as shipped (2 processes, MLflow on), cut to 3 steps of a 1-layer model. Its own
        # TORCH_EXTENSIONS_DIR, empty: the C++ kernels built against this venv's torch headers would otherwise
        # replace the checkout's builds in the shared cache. DeepSpeed's shared-memory all-reduce (inference only;
        # ~25 s of C++) is not built for training (trainer.setup_distributed)
        extensions = tmp_path / "torch_extensions"
        demo = subprocess.run([str(venv / "bin" / "neurograph"), "demo", "--run-root", str(home / "demo"),
                               "trainer.max_steps=3", "trainer.log_every=1", "trainer.eval_every=0",
                               "trainer.eval_batches=2", "model.n_layer=1"],
                              cwd=home, env={**clean_env(), "TORCH_EXTENSIONS_DIR": str(extensions)},
                              capture_output=True, text=True, timeout=900)
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-4000:]
        assert not list(extensions.glob("deepspeed_*")), sorted(extensions.iterdir())
        assert "demo finished" in demo.stdout, demo.stdout[-2000:]
        checkpoints = home / "demo" / "run" / "checkpoints"
        assert (checkpoints / "latest").read_text().strip() == tag_for(3)
        assert check_checkpoint(checkpoints / tag_for(3)) is None
    finally:
        shutil.rmtree(venv, ignore_errors=True)
