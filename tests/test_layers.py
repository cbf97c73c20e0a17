"""The package's import graph: no circle, and imports point one way (STYLE.md).

Read from the source with ast, so function-level and TYPE_CHECKING imports count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "messenger"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from pkg import module` imports that module; `from module import
                # name` imports the module itself.
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t for t in targets if t in paths] or [node.module]
            else:
                continue
            graph[name] |= {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or [] when there is none."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def imports_of(graph: dict[str, set[str]], layer: str) -> set[str]:
    """Every module that modules under `layer` import."""
    return {
        target
        for name, targets in graph.items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
    }


def test_find_cycle_finds_a_circle_and_only_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    assert find_cycle(graph) == []


def test_runtime_is_a_leaf_below_services_and_workers() -> None:
    imported = imports_of(import_graph(), "messenger.runtime")
    upper = ("messenger.services", "messenger.workers", "messenger.api")
    assert not {m for m in imported if m.startswith(upper)}


def test_storage_and_realtime_never_import_each_other() -> None:
    graph = import_graph()
    assert not {m for m in imports_of(graph, "messenger.storage") if "realtime" in m}
    assert not {m for m in imports_of(graph, "messenger.realtime") if "storage" in m}
