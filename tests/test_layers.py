"""The layering of DESIGN.md, read from the source with ``ast``: every import (also one inside a function)
is an edge, the graph has no cycle, ``config.py`` is a leaf, and no layer imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import selfdistill

ROOT = Path(selfdistill.__file__).parent
PACKAGE = "selfdistill"

# top to bottom; a module may import its own layer and those below it
LAYERS = ["__main__", "cli", "commands", "plugin", "analysis", "engine", "methods", "losses", "models", "data",
          "config", "distributed", "cpus", "fileio", "errors", "interrupts"]
# lower than their package: pure functions of tensors, like losses/ (the engine's evaluation accumulates them)
PLACED_LOWER = {"selfdistill.analysis.metrics": "losses"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The selfdistill modules that importing ``name`` imports, anywhere in its file (a ``from a.b import c``
    is the module ``a.b.c`` when that is a module, else ``a.b``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def edges_of(name: str) -> set[str]:
    """What ``import name`` runs: each imported module and the packages above it that are not being imported
    already (``name``'s own packages are)."""
    own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    out = set()
    for target in imports_of(name):
        parts = target.split(".")
        out |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)} - own
    return out - {name}


GRAPH = {name: edges_of(name) for name in MODULES}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def part_of(name: str) -> str:
    return PLACED_LOWER.get(name) or name.split(".")[1]


def layer(name: str) -> int:
    return LAYERS.index(part_of(name))


def test_the_parser_sees_every_import_and_the_packages_it_runs():
    assert "selfdistill.distributed" in imports_of("selfdistill.cli")  # inside a function only
    assert "selfdistill.models.teachers" in imports_of("selfdistill.engine.validate")  # from ..models.teachers
    assert {"selfdistill.engine", "selfdistill.engine.validate"} <= edges_of("selfdistill.analysis.runs")
    assert "selfdistill.engine" not in edges_of("selfdistill.engine.trainer")  # its own package is loading already


def test_the_import_graph_has_no_cycle():
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


def test_config_is_a_leaf():
    # before: config.py imported data, methods, models and teachers inside its functions to check names; it
    # stands only on the ground (errors, and fileio, which reads files safely)
    package = {n for n in MODULES if n == "selfdistill.config" or n.startswith("selfdistill.config.")}
    assert len(package) == 4  # __init__, typed, yaml_io, ranges
    for name in package:
        assert imports_of(name) <= {"selfdistill.errors", "selfdistill.fileio", *package}, name


@pytest.mark.parametrize("name", [n for n in MODULES if n != PACKAGE])
def test_no_module_imports_a_layer_above_its_own(name):
    above = sorted(t for t in imports_of(name) if t != PACKAGE and layer(t) < layer(name))
    assert not above, f"{name} (layer {LAYERS[layer(name)]}) imports {above}"


def test_every_module_has_a_layer():
    assert {part_of(n) for n in MODULES if n != PACKAGE} <= set(LAYERS)
