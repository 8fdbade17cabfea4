"""The package's layers, checked from the source (AST only, no import is executed).

Layers, lowest first: ``graph/`` and ``linalg/`` (the IR and linear algebra), ``methods/`` (the
analyses), ``frontends/`` (models -> graph), then ``api`` and ``cli``. A module may import only
from its own layer or below, and no chain of imports may lead back to where it started. Imports
inside functions count like the others: a cycle through a function-level import is still a cycle
(it only moves the failure from import time to call time).

An edge ``a -> b`` is recorded for every ``import b`` / ``from b import name`` in ``a``, where
``b`` is resolved to a module of ``src/lipbound`` (``from pkg import sub`` names the submodule
``pkg.sub`` when it is one, else the package ``pkg`` itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lipbound"

# (layer of the importing module, forbidden prefixes of the imported module)
FORBIDDEN = {
    "lipbound.graph": ("lipbound.frontends", "lipbound.methods", "lipbound.api", "lipbound.cli"),
    "lipbound.linalg": ("lipbound.frontends", "lipbound.methods", "lipbound.api", "lipbound.cli"),
    "lipbound.methods": ("lipbound.frontends", "lipbound.api", "lipbound.cli"),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every ``.py`` file under ``root``; a
    relative import that names no module of the package is kept as it is (:func:`unresolved`)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                     for stmt in block.body for n in ast.walk(stmt)}  # never run: no runtime edge
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = node.module if node.level == 0 else ".".join(p for p in (base, node.module) if p)
                for alias in node.names:
                    targets.add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in files else mod)
        edges[name] = {t for t in targets if (t in files or t.startswith(root.name + ".")) and t != name}
    return edges


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def unresolved(edges: dict[str, set[str]]) -> list[str]:
    """Imports of the package's own names that are no module of it (they fail when run)."""
    return [f"{m} imports {t}" for m, ts in sorted(edges.items()) for t in sorted(ts) if t not in edges]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges.get(m, ())):
            if t not in edges:
                continue
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, targets in sorted(edges.items()):
        for layer, banned in FORBIDDEN.items():
            if mod == layer or mod.startswith(layer + "."):
                out += [f"{mod} imports {t}" for t in sorted(targets)
                        if any(t == b or t.startswith(b + ".") for b in banned)]
    return out


def test_lower_layers_import_nothing_above_them():
    assert layer_violations(import_edges(SRC)) == []


def test_every_import_of_the_package_resolves():
    assert unresolved(import_edges(SRC)) == []


def test_no_import_cycle():
    assert find_cycle(import_edges(SRC)) is None


# ---- the check itself can fail ------------------------------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "lipbound"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("importer, line", [
    ("graph/ir.py", "from ..frontends import from_torch"),
    ("linalg/ops.py", "from .. import api"),
    ("methods/m.py", "def f():\n    from ..api import as_graph\n"),
    ("methods/m.py", "import lipbound.cli"),
])
def test_a_forbidden_import_is_found(tmp_path, importer, line):
    files = {"__init__.py": "", "api.py": "", "cli.py": "", "graph/__init__.py": "", "graph/ir.py": "",
             "linalg/__init__.py": "", "linalg/ops.py": "", "methods/__init__.py": "", "methods/m.py": "",
             "frontends/__init__.py": "from_torch = None\n"}
    files[importer] = line
    assert len(layer_violations(import_edges(_package(tmp_path, files)))) == 1


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    # methods/__init__ imports best at the top; best imports the registry inside a function.
    root = _package(tmp_path, {"__init__.py": "", "methods/__init__.py": "from . import best\nMETHODS = {}\n",
                               "methods/best.py": "def best():\n    from . import METHODS\n"})
    assert find_cycle(import_edges(root)) == ["lipbound.methods", "lipbound.methods.best", "lipbound.methods"]
    (root / "methods/best.py").write_text("def best(registry):\n    return registry\n")
    assert find_cycle(import_edges(root)) is None
