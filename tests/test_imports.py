"""The package's import graph: no cycles, and stages that stand alone.

The graph is read from the source (``ast``), so every import counts wherever it is written: at the top of a module,
inside a function (a lazy import is still a dependency, only a later one), and under ``if TYPE_CHECKING:``. Type-only
imports count too: they never run, but a module that names another's types in its signatures depends on it as much
as one that calls it, and a cycle through them is still two modules that can only be read, changed or moved
together. An edge goes to the module an import names (``from dnd.stages import crop`` → ``dnd.stages.crop``,
``from dnd.store import read_model`` → ``dnd.store``); importing ``dnd.a.b`` runs ``dnd/a/__init__.py`` first, but
that is how Python finds modules, not a use of the package's contents, so it adds no edge to ``dnd.a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dnd"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the modules of the package under ``root`` it imports (anywhere in its source)."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.update(
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names
                )
        graph[module] = {target for target in targets if target in paths and target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through every strongly connected group of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``group`` (breadth-first inside the group)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in sorted(graph[module] & group):
            if target == start:
                return [*paths[module], start]
            if target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def stage_modules(graph: dict[str, set[str]]) -> set[str]:
    """The one-module-per-stage modules: everything in ``dnd.stages`` but its kernel and its registry."""
    return {m for m in graph if m.startswith("dnd.stages.") and m not in ("dnd.stages.base", "dnd.stages.registry")}


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_stage_imports_another_stage():
    graph = import_graph(PACKAGE)
    stages = stage_modules(graph)
    assert stages == {
        f"dnd.stages.{name}" for name in ("record", "crop", "caption", "summarize", "synthesize", "score")
    }
    crossing = sorted(f"{module} imports {target}" for module in stages for target in graph[module] & stages)
    assert not crossing, crossing


def test_only_the_registry_imports_stage_modules():
    """Stages are no library: what several modules need lives in a module named for what it is."""
    graph = import_graph(PACKAGE)
    stages = stage_modules(graph)
    users = sorted(f"{module} imports {target}" for module in graph for target in graph[module] & stages)
    assert all(line.startswith("dnd.stages.registry ") for line in users), users


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_imports_inside_functions_and_type_checking_blocks_are_edges(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "def f():\n    from pkg import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.c import C\n",
            "sub/__init__.py": "",
            "sub/c.py": "from ..a import f\nimport pkg.sub\n",
        },
    )
    graph = import_graph(package)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a", "pkg.sub"},
    }
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_a_cycle_is_named_in_the_failure(tmp_path, monkeypatch):
    package = write_package(tmp_path, {"__init__.py": "", "x.py": "import pkg.y\n", "y.py": "from pkg import x\n"})
    monkeypatch.setitem(globals(), "PACKAGE", package)
    with pytest.raises(AssertionError, match=r"pkg\.x -> pkg\.y -> pkg\.x"):
        test_the_package_has_no_import_cycle()
