"""The architecture holds (docs/architecture.md): no import cycles between files, no arrow up the
package layering, a model package that needs only torch and pydantic; and the graph builder
(tests/import_graph.py) that checks it is itself right, on a package written here."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.import_graph import (ALLOWED, PACKAGES, REPO, cycles, external_imports, forbidden_edges, module_graph,
                                modules, package_edges, package_of, shortest_cycle, unresolved)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph()


def where(module: str) -> str:
    return str(modules()[module].relative_to(REPO))


# ---- the project ---------------------------------------------------------------------------------

def test_the_graph_covers_every_package(graph):
    assert {package_of(m) for m in graph} == set(PACKAGES) == set(ALLOWED)
    assert sum(len(targets) for targets in graph.values()) > 100  # the files' imports were found


def test_no_import_cycles_between_files(graph):
    found = cycles(graph)
    assert not found, "import cycles (one way round each group of files that import each other):\n" + "\n".join(
        f"  {' -> '.join(shortest_cycle(graph, component[0]))}  ({len(component)} files)" for component in found)


def test_the_allowed_package_layering_has_no_cycle():
    assert cycles(ALLOWED) == []


def test_every_arrow_between_packages_is_allowed(graph):
    bad = forbidden_edges(graph)
    assert not bad, "imports up the layering (docs/architecture.md):\n" + "\n".join(
        f"  {where(source)} imports {target}: {package_of(source)} may import only "
        f"{sorted(ALLOWED[package_of(source)]) or 'nothing of the project'}" for source, target in bad)


def test_every_project_import_names_a_file_of_the_project():
    missing = unresolved()
    assert not missing, "imports of project modules that do not exist:\n" + "\n".join(
        f"  {where(module)}:{line}: {name}" for module, line, name in missing)


# Model files ship in Hugging Face exports (launch/export/hf.py copies them) and are the part others
# import: importing any of them needs only torch (and each other, and the kernels registered as their
# siblings); model/schema.py validates configs with pydantic and model/__init__.py registers the kernels.
MODEL_MAY_IMPORT = frozenset({"torch"}) | frozenset(sys.stdlib_module_names)
# Beyond that, exactly these (a stale entry fails too), each for its reason:
MODEL_EXTRAS = {
    "model/hf_integrator.py": {"transformers"},        # arch hf_inl is a transformers GPT-2/Llama: in its builder
    "model/inl_convergence.py": {"matplotlib"},         # plot_convergence's PNG: inside that function
    "model/configuration_neurograph.py": {"transformers"},  # the HF wrappers, which transformers loads
    "model/modeling_neurograph.py": {"transformers"},
    "model/schema.py": {"pydantic"},  # validates the `model` section: never shipped
}
HF_WRAPPERS = ("model/configuration_neurograph.py", "model/modeling_neurograph.py")


def model_files() -> dict[str, Path]:
    return {str(path.relative_to(REPO)): path for module, path in modules().items() if package_of(module) == "model"}


def test_importing_a_family_module_needs_only_torch():
    """Outside the HF wrappers and the package's own plumbing, no model file imports anything else
    when it is imported: the extras of MODEL_EXTRAS are imported inside the functions that use them."""
    plumbing = ("model/__init__.py", "model/schema.py")
    found = {name: sorted(external_imports(path, in_functions=False) - MODEL_MAY_IMPORT)
             for name, path in model_files().items() if name not in HF_WRAPPERS + plumbing}
    assert {name: extra for name, extra in found.items() if extra} == {}


def test_model_imports_nothing_but_torch_kernels_and_the_listed_extras(graph):
    found = {name: external_imports(path) - MODEL_MAY_IMPORT for name, path in model_files().items()}
    assert {name: extra for name, extra in found.items() if extra} == MODEL_EXTRAS
    project = {f"{where(source)} -> {target}" for source, targets in graph.items() if package_of(source) == "model"
               for target in targets if package_of(target) not in ("model", "kernels")}
    assert project == set()


# ---- the graph builder, on a package written here --------------------------------------------------

FILES = {
    "alpha/__init__.py": "from . import sibling\n",
    "alpha/sibling.py": """
        import os

        def later():
            from .other import value  # lazy: still an edge, and it closes a cycle
            return value
        """,
    "alpha/other.py": "from neurograph.alpha import sibling\nvalue = 1\n",
    "alpha/selfish.py": "import neurograph.alpha.selfish\n",
    "alpha/sub/__init__.py": "from .. import other\nfrom ..sibling import later\n",
    "alpha/sub/deep.py": "from ...beta import user\n",
    "beta/user.py": """
        from neurograph.alpha.sibling import later
        from ..alpha import other, value_of_alpha
        import neurograph.beta
        """,
    "beta/broken.py": "def f():\n    from .missing import thing\n    import neurograph.gamma\n",
}
A, B = "neurograph.alpha", "neurograph.beta"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_builder_finds_every_edge(tree):
    assert module_graph(tree, ("alpha", "beta")) == {
        A: {f"{A}.sibling"},
        f"{A}.sibling": {f"{A}.other"},
        f"{A}.other": {f"{A}.sibling"},
        f"{A}.selfish": {f"{A}.selfish"},
        f"{A}.sub": {f"{A}.other", f"{A}.sibling"},
        f"{A}.sub.deep": {f"{B}.user"},
        f"{B}.user": {f"{A}.sibling", f"{A}.other", A},  # `value_of_alpha` is a name in alpha/__init__.py
        f"{B}.broken": set(),
    }


def test_builder_reports_imports_of_missing_modules(tree):
    assert unresolved(tree, ("alpha", "beta")) == [
        (f"{B}.broken", 2, f"from {B}.missing import thing"),
        (f"{B}.broken", 3, "neurograph.gamma"),
    ]


def test_builder_finds_the_cycles(tree):
    graph = module_graph(tree, ("alpha", "beta"))
    assert cycles(graph) == [[f"{A}.other", f"{A}.sibling"], [f"{A}.selfish"]]
    small = {"a": {"b"}, "b": {"c", "a2"}, "a2": {"a"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert cycles(small) == [["a", "a2", "b", "c"]]
    assert shortest_cycle(small, "a") == ["a", "b", "a2", "a"] and shortest_cycle(small, "d") == []


def test_builder_groups_edges_by_package_and_flags_the_forbidden_ones(tree):
    graph = module_graph(tree, ("alpha", "beta"))
    assert package_edges(graph) == {
        ("alpha", "beta"): [(f"{A}.sub.deep", f"{B}.user")],
        ("beta", "alpha"): [(f"{B}.user", A), (f"{B}.user", f"{A}.other"), (f"{B}.user", f"{A}.sibling")],
    }
    assert forbidden_edges(graph, {"alpha": set(), "beta": {"alpha"}}) == [(f"{A}.sub.deep", f"{B}.user")]


def test_external_imports_tell_module_level_from_lazy(tree):
    assert external_imports(tree / "alpha/sibling.py") == {"os"}
    assert external_imports(tree / "beta/broken.py") == {"neurograph"}
    assert external_imports(tree / "beta/broken.py", in_functions=False) == set()
