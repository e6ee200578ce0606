"""The import graph of the harness has no cycle, between files or between packages.

Every module of the packages is parsed with `ast` (nothing is imported), so an import inside a function
counts like one at the top: a lazy import that only hides a cycle is still a cycle. A module named by a
string (`importlib.import_module(name)`, the CLI's subcommand table) is not an import statement and is not
seen here: the dispatcher in qsattn/cli.py sits above every package by design.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qsattn", "baselines", "eval", "slurm", "results", "tools")


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (a package is its __init__.py)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that `import name` loads last (its longest prefix that is a module), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in the file, at any depth."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` in a package is the package itself; in a module, its parent
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.append((resolved, node.lineno))
    return found


def file_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, dict[str, str]]:
    """module -> {imported module: 'file:line' of the first such import}."""
    modules = module_files(root, packages)
    graph: dict[str, dict[str, str]] = {m: {} for m in modules}
    for module, path in modules.items():
        for target, line in imports_of(module, path, modules):
            graph[module].setdefault(target, f"{path.relative_to(root)}:{line}")
    return graph


def package_graph(files: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Top-level package -> {imported package: 'file:line'}: an import of pkg.mod inside package other is
    other -> pkg."""
    graph: dict[str, dict[str, str]] = {}
    for module, targets in files.items():
        edges = graph.setdefault(module.split(".")[0], {})
        for target, where in targets.items():
            if target.split(".")[0] != module.split(".")[0]:
                edges.setdefault(target.split(".")[0], where)
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle (a list of nodes, the first repeated at the end) per strongly connected component that has one."""
    return [_a_cycle_in(component, graph) for component in tangles(graph)]


def tangles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (sorted): each node reaches every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graphs are small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                connect(succ)
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
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _a_cycle_in(component: list[str], graph: dict[str, dict[str, str]]) -> list[str]:
    """A shortest cycle through the component's first node, by breadth-first search inside the component."""
    start, members = component[0], set(component)
    parent = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return list(reversed(path)) + [start]
                if succ in members and succ not in parent:
                    parent[succ] = node
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no cycle found in the strongly connected component {component}")


def describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    edges = "; ".join(f"{a} -> {b} at {graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
    return " -> ".join(cycle) + f"  ({edges})"


# --- the checks of the harness --------------------------------------------------------------------------

# Cycles that other work in progress removes (each named with where it is closed). The checks fail on any
# other cycle, and on each of these once it is gone, so that this list can only shrink.
OPEN_FILE_CYCLES = {
    frozenset({"baselines.model", "baselines.compiled_step"}): "the step's compiled form (speed)",
}
OPEN_PACKAGE_CYCLES = {
    # eval -> qsattn: EvalError's base and did_you_mean (qsattn.errors), the CLI's --run (config, pipeline),
    # the synthetic ground truth (qsattn.data.synthetic), the FID modes (qsattn.engine.config); qsattn -> eval: the
    # pipeline scores; eval -> results: released.py reads the published names (results.naming); slurm and
    # results join through them (slurm -> eval: the preflight; results -> slurm: the folders' status)
    frozenset({"qsattn", "eval", "results", "slurm"}): "the engine and the metrics, until the engine has its own room",
}


def _check(graph: dict[str, dict[str, str]], still_open: dict[frozenset, str], what: str) -> None:
    found = tangles(graph)
    new = [c for c in found if frozenset(c) not in still_open]  # a known tangle that grew is new too
    assert not new, f"import cycles between {what}:\n" + "\n".join(describe(_a_cycle_in(c, graph), graph) for c in new)
    closed = [sorted(c) for c in still_open if c not in {frozenset(f) for f in found}]
    assert not closed, f"no longer a cycle (remove it from the list in tests/test_imports.py): {closed}"


def test_no_import_cycle_between_files():
    _check(file_graph(), OPEN_FILE_CYCLES, "files")


def test_no_import_cycle_between_packages():
    _check(package_graph(file_graph()), OPEN_PACKAGE_CYCLES, "packages")


# --- the checker itself, on small trees with known answers -----------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_lazy_import_inside_a_function_closes_a_cycle(tmp_path):
    root = _tree(tmp_path, {"a/__init__.py": "", "a/x.py": "from a.y import f\n",
                            "a/y.py": "def f():\n    from a import x\n    return x\n"})
    graph = file_graph(root, ("a",))
    assert graph["a.x"] == {"a.y": "a/x.py:1"} and graph["a.y"] == {"a.x": "a/y.py:2"}
    assert cycles(graph) == [["a.x", "a.y", "a.x"]]
    assert describe(cycles(graph)[0], graph) == "a.x -> a.y -> a.x  (a.x -> a.y at a/x.py:1; a.y -> a.x at a/y.py:2)"


def test_relative_imports_are_resolved(tmp_path):
    root = _tree(tmp_path, {"a/__init__.py": "from . import x\n", "a/x.py": "from .sub import z\nfrom . import y\n",
                            "a/y.py": "import a.sub.z as zz\n", "a/sub/__init__.py": "from .. import y\n",
                            "a/sub/z.py": "from ..x import thing\n"})
    graph = file_graph(root, ("a",))
    assert set(graph["a"]) == {"a.x"}
    assert set(graph["a.x"]) == {"a.sub.z", "a.y"}
    assert set(graph["a.y"]) == {"a.sub.z"}
    assert set(graph["a.sub"]) == {"a.y"}
    assert set(graph["a.sub.z"]) == {"a.x"}
    assert tangles(graph) == [["a.sub.z", "a.x", "a.y"]]  # a.y -> a.sub.z -> a.x -> a.y as well
    assert cycles(graph) == [["a.sub.z", "a.x", "a.sub.z"]]  # the shortest through the first


def test_an_edge_between_packages_comes_from_any_of_their_modules(tmp_path):
    root = _tree(tmp_path, {"p/__init__.py": "", "p/m.py": "import q.n\n", "q/__init__.py": "",
                            "q/n.py": "import os\n", "q/k.py": "def f():\n    from p import m\n"})
    files = file_graph(root, ("p", "q"))
    assert cycles(files) == []  # no file imports itself back
    packages = package_graph(files)
    assert packages == {"p": {"q": "p/m.py:1"}, "q": {"p": "q/k.py:2"}}
    assert cycles(packages) == [["p", "q", "p"]]


def test_an_acyclic_graph_and_outside_modules_give_no_cycle(tmp_path):
    root = _tree(tmp_path, {"a/__init__.py": "import os, torch\n", "a/x.py": "from a import y\nimport numpy.linalg\n",
                            "a/y.py": "from a import __version__\n"})
    graph = file_graph(root, ("a",))
    assert graph == {"a": {}, "a.x": {"a.y": "a/x.py:1"}, "a.y": {"a": "a/y.py:1"}}
    assert cycles(graph) == []
