"""The import graph of NeuroGraph's packages, read from the source with `ast` (nothing is imported).

    .venv/bin/python tests/import_graph.py    # package arrows (with file-level edge counts), cycles

Nodes are files, named as they are imported: `kernels/installed.py` is `neurograph.kernels.installed`,
`model/__init__.py` is `neurograph.model` (pyproject.toml maps `neurograph.<folder>` to each root
folder). An edge A -> B means that A's file imports B somewhere: at module level, in a class, or inside
a function (a lazy import is still a dependency). Relative imports are resolved against the importing
file's package (a family file's `from .selective_scan import` is kernels/selective_scan/__init__.py: see
`kernel_aliases`); `from X import y` is an edge to the module `X.y` when y is a submodule, else to `X`.
An import of `neurograph.<...>` that names no file or folder of the project is reported by
`unresolved()`: it would fail when it runs.

tests/test_architecture.py checks the graph: no cycles, and every arrow between packages allowed by
ALLOWED (docs/architecture.md explains the layering).
"""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "neurograph"
PACKAGES = ("kernels", "model", "data_pipeline", "trainer", "launch", "configs")

# Which packages each package may import (besides itself): only downwards in
#   kernels <- model <- trainer <- launch,  data_pipeline <- trainer,  data_pipeline <- launch.
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "model": {"kernels"},
    "data_pipeline": set(),
    "trainer": {"model", "kernels", "data_pipeline"},
    "launch": {"trainer", "model", "kernels", "data_pipeline", "configs"},
    "configs": set(),  # YAML files only
}


def modules(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every .py file of the packages, by module name (`__init__.py` is its package's name)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((NAMESPACE, *parts))] = path
    return found


def folders(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Module names of the packages' folders, with or without `__init__.py` (kernels/ has none)."""
    names = {NAMESPACE}
    for package in packages:
        for folder in [root / package, *(root / package).rglob("*")]:
            if folder.is_dir() and folder.name != "__pycache__":
                names.add(".".join((NAMESPACE, *folder.relative_to(root).parts)))
    return names


def package_of(module: str) -> str:
    """`neurograph.launch.commands.train` -> `launch`."""
    return module.split(".")[1]


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module name, names imported from it) for every import statement of the file;
    `import a.b` gives ("a.b", []), `from ..x import y, z` gives (absolute x, ["y", "z"])."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if not node.level:
                yield node.lineno, node.module, names
                continue
            # `from . import x` in a package's __init__ is relative to the package itself,
            # in any other file to the file's package; each further dot goes one package up.
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            if node.level - 1 >= len(anchor):  # above the namespace: resolves nowhere
                yield node.lineno, "." * node.level + (node.module or ""), names
                continue
            base = anchor[: len(anchor) - (node.level - 1)]
            yield node.lineno, ".".join(base + ([node.module] if node.module else [])), names


def kernel_aliases(root: Path = REPO) -> dict[str, str]:
    """`neurograph.model.x` -> `neurograph.kernels.x` for the kernel modules model/__init__.py registers
    as siblings of the family files (its KERNEL_MODULES tuple, read without importing it)."""
    path = root / "model" / "__init__.py"
    if not path.is_file():
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "KERNEL_MODULES" for t in node.targets):
            return {f"{NAMESPACE}.model.{name}": f"{NAMESPACE}.kernels.{name}" for name in ast.literal_eval(node.value)}
    return {}


def _scan(root: Path, packages: tuple[str, ...]) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    files = modules(root, packages)
    aliases = kernel_aliases(root)
    dirs = folders(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in files}
    unresolved: list[tuple[str, int, str]] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target, names in _imported_names(tree, module, path.name == "__init__.py"):
            target = aliases.get(target, target)
            if target != NAMESPACE and not target.startswith(NAMESPACE + "."):
                if target.startswith("."):
                    unresolved.append((module, line, target))
                continue  # the standard library or a third-party package
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in files]
            if target in files:
                # `from X import y`: the submodule X.y when there is one, else a name defined in X
                graph[module].update(submodules)
                if not names or len(submodules) < len(names):  # `import X`, or names defined in X's file
                    graph[module].add(target)
            elif target in dirs and len(submodules) == len(names):
                # a folder without __init__.py (kernels/): `import` it runs no file, `from` it only submodules
                graph[module].update(submodules)
            else:
                unresolved.append((module, line, f"from {target} import {', '.join(names)}" if names else target))
    return graph, unresolved


def module_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the modules it imports, for every file of `packages` under `root`."""
    return _scan(root, packages)[0]


def unresolved(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> list[tuple[str, int, str]]:
    """(module, line, import) for each project import that names no file or folder of the project."""
    return _scan(root, packages)[1]


def external_imports(path: Path, in_functions: bool = True) -> set[str]:
    """First components of the file's absolute imports (`torch.nn` -> `torch`, `neurograph.kernels.x`
    -> `neurograph`); with in_functions=False only the imports that run when the module is imported
    (module and class level, not inside a function)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module.split(".")[0])
        elif not in_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module, and modules
    that import themselves (Tarjan's algorithm), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest chain of imports from `start` back to itself ([] when there is none), for messages:
    a cycle component names its modules, this shows one way round it."""
    paths = {start: [start]}
    queue = [start]
    for node in queue:  # breadth first: the queue grows while it is walked
        for succ in sorted(graph.get(node, ())):
            if succ == start:
                return paths[node] + [start]
            if succ not in paths:
                paths[succ] = paths[node] + [succ]
                queue.append(succ)
    return []


def package_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(importing package, imported package) -> its file-level edges, for edges between packages."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if package_of(source) != package_of(target):
                edges.setdefault((package_of(source), package_of(target)), []).append((source, target))
    return edges


def forbidden_edges(graph: dict[str, set[str]], allowed: Optional[dict[str, set[str]]] = None) -> list[tuple[str, str]]:
    """The file-level edges between packages that `allowed` (default ALLOWED) does not permit."""
    allowed = ALLOWED if allowed is None else allowed
    return [edge for (source, target), edges in package_edges(graph).items()
            if target not in allowed.get(source, set()) for edge in edges]


def report(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> str:
    graph, missing = _scan(root, packages)
    inner = Counter(package_of(s) for s, targets in graph.items() for t in targets if package_of(s) == package_of(t))
    lines = ["package graph (arrow: imports; count: file-level edges)", ""]
    layer = {package: i for i, package in enumerate(packages)}
    arrows = sorted(package_edges(graph).items(), key=lambda arrow: (layer[arrow[0][0]], layer[arrow[0][1]]))
    for (source, target), edges in arrows:
        mark = "" if target in ALLOWED.get(source, set()) else "   <- NOT ALLOWED"
        lines.append(f"  {source:<13} -> {target:<13} {len(edges):>3}{mark}")
    lines += ["", "between a package and its sub-packages (folders) and among those:"]
    subpackages = {m for m in graph if any(other.startswith(m + ".") for other in graph)}

    def part(module: str) -> str:
        first_two = ".".join(module.split(".")[:3])
        return first_two.split(".", 1)[1].replace(".", "/") if first_two in subpackages else package_of(module)

    inside = Counter((part(s), part(t)) for s, targets in graph.items() for t in targets
                     if package_of(s) == package_of(t) and part(s) != part(t))
    lines += [f"  {source:<17} -> {target:<17} {count:>3}" for (source, target), count in sorted(inside.items())]
    lines += ["", "files and edges within each package:"]
    for package in packages:
        count = sum(package_of(m) == package for m in graph)
        lines.append(f"  {package:<13} {count:>3} files, {inner[package]:>3} edges")
    lines.append("")
    found = cycles(graph)
    lines.append("cycles: " + ("none" if not found else f"{len(found)}"))
    lines += [f"  {' -> '.join(shortest_cycle(graph, component[0]))}" for component in found]
    if missing:
        lines.append("unresolved project imports:")
        lines += [f"  {module}:{line}: {name}" for module, line, name in missing]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
