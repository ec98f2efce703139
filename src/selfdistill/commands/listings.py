"""``selfdistill methods``, ``models`` and ``datasets``: what can be named, one line each."""

from __future__ import annotations

import argparse

from ..data import DATASETS
from ..methods import ALIASES, METHODS
from ..models import model_names


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "methods":
        lines = {name: cls.summary for name, cls in METHODS.items()} | {k: v[1] for k, v in ALIASES.items()}
        width = max(map(len, lines))
        for name, summary in lines.items():
            print(f"{name:<{width}}  {summary}")
    elif args.command == "models":
        print("\n".join(model_names()))
    else:
        width = max(map(len, DATASETS))
        for name, info in DATASETS.items():
            print(f"{name:<{width}}  {info.description}")
    return 0
