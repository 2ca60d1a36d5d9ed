"""The widgets package imports only downwards: each module imports the submodule that defines
what it needs, never the package back (its __init__ is the one importer of the dock), and no
two modules import each other, counting imports inside functions (issue 27)."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_nstseg.widgets

PACKAGE = "napari_nstseg.widgets"
FOLDER = Path(napari_nstseg.widgets.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module -> the widgets modules it imports, anywhere in it; ``from X import a`` counts as
    importing X, and X.a too when that is a module."""
    modules = {p.stem: p for p in FOLDER.glob("*.py")}
    names = {PACKAGE} | {f"{PACKAGE}.{m}" for m in modules if m != "__init__"}
    graph: dict[str, set[str]] = {}
    for stem, path in modules.items():
        name = PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}"
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = PACKAGE.rsplit(".", node.level - 1)[0]
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                edges.add(source)
                edges.update(f"{source}.{a.name}" for a in node.names)
        graph[name] = (edges & names) - {name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_no_widgets_module_imports_the_package_back():
    graph = _imports()
    back = sorted(name for name, edges in graph.items() if PACKAGE in edges)
    assert back == []
    assert graph[PACKAGE] == {f"{PACKAGE}.dock"}


def test_no_import_cycle_in_widgets():
    graph = _imports()
    assert graph[f"{PACKAGE}.dock"]  # the dock imports its parts: the scan sees imports
    cycles = sorted(name for name in graph if name in _reaches(graph, name))
    assert cycles == []
