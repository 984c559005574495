"""The package's floor plan holds: no import circle between modules or between packages of
edgecompress/, and no private name (or private module) imported from another package.

Imports are read from the source (module level and inside functions), so an import moved into a
function to dodge a circle is still a circle here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgecompress"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(path: Path, known: set[str]) -> list[tuple[str, str]]:
    """(imported module, imported name or '') of every `edgecompress` import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("edgecompress")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgecompress") and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, "") if sub in known else (node.module, a.name))
    return out


def package(module: str) -> str:
    """edgecompress.pipeline.stages.prune -> edgecompress.pipeline; top-level modules are their own."""
    return ".".join(module.split(".")[:2])


def graph(key=lambda m: m) -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        for target, _ in imports(path, set(mods)):
            a, b = key(name), key(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    assert cycles(graph()) == []


def test_no_import_circle_between_packages():
    edges = graph(package)
    # a package's __init__ importing its own modules is not a circle: package() maps both to one node
    assert cycles(edges) == []


def test_no_private_name_crosses_packages():
    mods = modules()
    crossing = []
    for name, path in mods.items():
        for target, imported in imports(path, set(mods)):
            if package(target) == package(name):
                continue
            private_module = any(part.startswith("_") and part != "__init__" for part in target.split("."))
            private_name = imported.startswith("_") and not imported.endswith("__")   # __version__ is public
            if private_module or private_name:
                crossing.append(f"{name} imports {target}{':' + imported if imported else ''}")
    assert crossing == []


@pytest.mark.parametrize("edges, expected", [({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
                                             ({"a": {"b"}, "b": {"c"}}, [])])
def test_the_circle_finder_finds_circles(edges, expected):
    assert cycles(edges) == expected
