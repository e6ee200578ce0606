"""The import graph of the harness has no cycle, between files or between packages.

Every module of the packages is parsed with `ast` (nothing is imported), so an import inside a function
counts like one at the top: a lazy import that only hides a cycle is still a cycle.

The packages are the top-level folders, except that qsattn's two rooms, the engine (qsattn/engine/) and
the data (qsattn/data/), are packages of their own, and so is the command line (qsattn/cli.py and
qsattn/__main__.py), the composition root: it names each subcommand's module by a string in its COMMANDS
table, and those names count here as its imports. Nothing imports the command line. Counted by top-level
folder only, qsattn would hold both the engine and what the engine's users import (qsattn/errors.py, the
sampler), so that view has cycles by construction: qsattn.engine -> eval -> qsattn.errors.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qsattn", "baselines", "eval", "slurm", "results", "tools")
ROOMS = ("qsattn.engine", "qsattn.data")  # sub-packages that are nodes of the package graph
COMMAND_LINE = "qsattn.cli"  # the composition root; qsattn.__main__ only calls it


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


def top_level(module: str) -> str:
    return module.split(".")[0]


def room_of(module: str) -> str:
    """The package graph's node of a module: its room, the command line, or its top-level package."""
    if module in (COMMAND_LINE, "qsattn.__main__"):
        return COMMAND_LINE
    return next((room for room in ROOMS if module == room or module.startswith(room + ".")), top_level(module))


def package_graph(files: dict[str, dict[str, str]], node=top_level) -> dict[str, dict[str, str]]:
    """Package -> {imported package: 'file:line'}: an import of pkg.mod inside package other is
    other -> pkg; `node` names a module's package."""
    graph: dict[str, dict[str, str]] = {}
    for module, targets in files.items():
        edges = graph.setdefault(node(module), {})
        for target, where in targets.items():
            if node(target) != node(module):
                edges.setdefault(node(target), where)
    return graph


def command_modules(path: Path) -> dict[str, int]:
    """{module: line} named by the COMMANDS table of a command-line file: {name: ("module", "help"), ...}."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.AnnAssign):
            target = node.target
        else:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id == "COMMANDS" and isinstance(node.value, ast.Dict):
            return {value.elts[0].value: value.lineno for value in node.value.values}
    raise AssertionError(f"{path}: no COMMANDS table")


def harness_graph(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """The file graph of the harness, with the command line's subcommand modules as its imports."""
    graph = file_graph(root)
    cli_file = module_files(root)[COMMAND_LINE]
    for module, line in command_modules(cli_file).items():
        assert module in graph, f"{cli_file}:{line} names {module}, which is not a module of the harness"
        graph[COMMAND_LINE].setdefault(module, f"{cli_file.relative_to(root)}:{line}")
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

def _check(graph: dict[str, dict[str, str]], what: str) -> None:
    found = tangles(graph)
    assert not found, f"import cycles between {what}:\n" + "\n".join(describe(_a_cycle_in(c, graph), graph) for c in found)


def test_no_import_cycle_between_files():
    _check(harness_graph(), "files")


def test_no_import_cycle_between_packages():
    _check(package_graph(harness_graph(), room_of), "packages")


def test_nothing_imports_the_command_line():
    importers = {m: where for m, targets in file_graph().items() for t, where in targets.items()
                 if t == COMMAND_LINE and m != "qsattn.__main__"}
    assert not importers, f"the command line is the composition root, imported by nothing: {importers}"


def test_eval_and_baselines_do_not_import_the_engine():
    packages = package_graph(harness_graph(), room_of)
    assert "qsattn.engine" not in packages["eval"], f"eval imports the engine: {packages['eval']['qsattn.engine']}"
    assert packages["baselines"] == {}, f"baselines (the CUT family) imports other packages: {packages['baselines']}"


def test_the_architecture_page_lists_the_packages_in_an_order_the_imports_allow():
    """docs/architecture.md says each package imports only those above it in its table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    cells = re.findall(r"^\| `([^`]+)` \|", text, re.M)  # `qsattn/engine/` -> qsattn.engine, `qsattn/cli.py` -> qsattn.cli
    listed = [cell.rstrip("/").removesuffix(".py").replace("/", ".") for cell in cells]
    packages = package_graph(harness_graph(), room_of)
    assert sorted(listed) == sorted(packages), f"docs/architecture.md lists {listed}, the packages are {sorted(packages)}"
    upward = [f"{a} -> {b} at {where}" for a, edges in packages.items() for b, where in edges.items()
              if listed.index(b) > listed.index(a)]
    assert not upward, "imports of a package listed below the importer in docs/architecture.md: " + "; ".join(upward)


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


def test_the_command_table_names_modules_and_rooms_are_nodes(tmp_path):
    root = _tree(tmp_path, {"qsattn/__init__.py": "", "qsattn/errors.py": "",
                            "qsattn/cli.py": 'COMMANDS: dict = {"x": ("qsattn.engine.x", "help")}\nimport qsattn.errors\n',
                            "qsattn/engine/__init__.py": "", "qsattn/engine/x.py": "from qsattn import errors\n"})
    assert command_modules(root / "qsattn" / "cli.py") == {"qsattn.engine.x": 1}
    graph = harness_graph(root)
    assert graph["qsattn.cli"] == {"qsattn.errors": "qsattn/cli.py:2", "qsattn.engine.x": "qsattn/cli.py:1"}
    rooms = package_graph(graph, room_of)
    assert rooms["qsattn.cli"] == {"qsattn": "qsattn/cli.py:2", "qsattn.engine": "qsattn/cli.py:1"}
    assert rooms["qsattn.engine"] == {"qsattn": "qsattn/engine/x.py:1"} and rooms["qsattn"] == {}
    assert cycles(rooms) == [] and cycles(package_graph(graph)) == []  # top level: all one node "qsattn"
