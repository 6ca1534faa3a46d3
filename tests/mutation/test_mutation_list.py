"""bench/mutation.py's mutations still apply: each snippet occurs exactly once in its file, and
every model family and kernel has at least one mutation and tests to run."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _mutation_module():
    spec = importlib.util.spec_from_file_location("bench_mutation", ROOT / "bench" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_cleanly():
    mod = _mutation_module()
    assert {m.family for m in mod.MUTATIONS} == set(mod.TESTS) == {
        "transformer", "inn", "inl", "hf_inl", "mamba_stack", "lstm", "scan", "integrator", "cpu_kernels"}
    assert {m.kind for m in mod.MUTATIONS} >= {"return zeros", "drop a term", "swap an index", "skip the gate"}
    for m in mod.MUTATIONS:
        text = (ROOT / m.path).read_text()
        assert text.count(m.old) == 1, f"{m.name}: snippet found {text.count(m.old)} times in {m.path}"
        assert m.old != m.new
    for files in mod.TESTS.values():
        assert all((ROOT / f).is_file() for f in files)
