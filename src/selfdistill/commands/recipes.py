"""The bundled recipes (``configs/*.yaml``), usable by name: ``selfdistill train --config dlb_cifar100``.

Each recipe starts with two comment lines that ``selfdistill recipes`` shows: a one-line description,
then ``# Reproduces: ...`` saying which published or recorded figure it reproduces.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import BUNDLED_RECIPES

REPRODUCES = "# Reproduces:"


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    reproduces: str
    path: Path


def read_recipe(path: Path) -> Recipe:
    """The name and the two header lines of one recipe file."""
    lines = path.read_text().splitlines()
    description = lines[0].removeprefix("#").strip() if lines and lines[0].startswith("#") else ""
    reproduces = next((line.removeprefix(REPRODUCES).strip() for line in lines if line.startswith(REPRODUCES)), "")
    return Recipe(path.stem, description, reproduces, path)


def bundled_recipes() -> list[Recipe]:
    return [read_recipe(p) for p in sorted(BUNDLED_RECIPES.glob("*.yaml"))]


def format_recipes(recipes: list[Recipe]) -> str:
    width = max(len(r.name) for r in recipes)
    lines = []
    for r in recipes:
        lines.append(f"{r.name:<{width}}  {r.description}")
        lines.append(f"{'':<{width}}  reproduces: {r.reproduces}")
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    print(format_recipes(bundled_recipes()))
    return 0
