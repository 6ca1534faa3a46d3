"""tests/mutation/mutate.py: its mutations still apply (each snippet exactly once inside its function),
every model family and kernel has mutations and tests, anchoring by function works, and the scratch
copy's packages are the ones imported under `neurograph.`."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.mutation.mutate import MUTATIONS, ROOT, TESTS, Mutation, MutationError, mutated_text, namespace_env

SOURCES = {
    "model.py": """\
        def helper(x):
            return x + 1


        class Model:
            def forward(self, x):
                if x:
                    return x + 1
                return x
        """,
    "model.cpp": """\
        int helper(int x);  // declared, then defined
        int helper(int x) { return x + 1; }

        int forward(int x) {
          // a closing brace } in a comment
          if (x) {
            return x + 1;
          }
          return x;
        }
        """,
}


def _mutation(path: str, function: str, old: str, new: str = "return x - 1") -> Mutation:
    return Mutation("synthetic", "family", "kind", path, function, old, new)


@pytest.fixture
def root(tmp_path) -> Path:
    for name, text in SOURCES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_every_mutation_applies_cleanly():
    assert {m.family for m in MUTATIONS} == set(TESTS) == {
        "transformer", "inn", "inl", "hf_inl", "mamba_stack", "lstm", "scan", "integrator", "cpu_kernels", "triton_conv"}
    assert {m.kind for m in MUTATIONS} >= {"return zeros", "drop a term", "swap an index", "skip the gate"}
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    for m in MUTATIONS:
        assert mutated_text(m) != (ROOT / m.path).read_text(), m.name
    for files in TESTS.values():
        assert all((ROOT / f).is_file() for f in files)


@pytest.mark.parametrize("path, function", [("model.py", "Model.forward"), ("model.cpp", "forward")])
def test_a_snippet_twice_in_the_file_is_replaced_only_inside_its_function(root, path, function):
    mutated = mutated_text(_mutation(path, function, "return x + 1"), root)
    assert mutated.count("return x + 1") == mutated.count("return x - 1") == 1
    assert mutated.index("return x + 1") < mutated.index("forward") < mutated.index("return x - 1")


def test_snippets_match_whatever_their_indentation_and_replacements_are_reindented(root):
    mutated = mutated_text(_mutation("model.py", "Model.forward", "if x:\n  return x + 1", "if not x:\n    pass"), root)
    assert "        if not x:\n            pass\n        return x\n" in mutated


@pytest.mark.parametrize("path, function, old, error", [
    ("model.py", "Model.backward", "return x", "no function Model.backward in model.py"),
    ("model.py", "forward", "return x", "no function forward in model.py"),  # methods are named with their class
    ("model.py", "Model.forward", "return x", "snippet found 2 times in model.py, function Model.forward"),
    ("model.py", "helper", "if x:", "snippet found 0 times in model.py, function helper"),
    ("model.cpp", "backward", "return x", "no function backward in model.cpp"),
    ("model.cpp", "helper", "if (x)", "snippet found 0 times in model.cpp, function helper"),
])
def test_a_mutation_that_does_not_apply_names_its_file_and_function(root, path, function, old, error):
    with pytest.raises(MutationError, match="^" + re.escape(f"synthetic: {error}")):
        mutated_text(_mutation(path, function, old), root)


def test_the_scratch_copys_packages_are_the_ones_imported(tmp_path):
    tree = tmp_path / "copy"
    (tree / "folder").mkdir(parents=True)
    (tree / "folder" / "__init__.py").write_text("")
    (tree / "pyproject.toml").write_text('[tool.setuptools.package-dir]\n"neurograph.model" = "folder"\n')
    env = namespace_env(tree, tmp_path / "namespace")
    imported = subprocess.run([sys.executable, "-c", "import neurograph.model as m; print(m.__file__)"], env=env,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported).resolve() == (tree / "folder" / "__init__.py").resolve()
