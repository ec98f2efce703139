"""``selfdistill methods``, ``models`` and ``datasets``: what can be named, one line each, the name first (so
``cut -d' ' -f1`` gives the names) and then what a user needs to choose: whether a method needs a teacher or
trains several networks, where an architecture comes from (the same name means different networks in the
DLB code and in RepDistiller's benchmark), its other names and its options."""

from __future__ import annotations

import argparse

from ..data import DATASETS
from ..methods import ALIASES as METHOD_ALIASES
from ..methods import METHODS, method_needs
from ..models import ALIASES, default_model_options, model_names, model_note


def method_lines() -> list[str]:
    """Each method and each named combination: its name, what it needs, what it is."""
    summaries = {name: cls.summary for name, cls in METHODS.items()} | {k: v[1] for k, v in METHOD_ALIASES.items()}
    needs = {name: method_needs(name) for name in summaries}
    width, need_width = max(map(len, summaries)), max(map(len, needs.values()))
    return [f"{name:<{width}}  {needs[name]:<{need_width}}  {summary}" for name, summary in summaries.items()]


def model_lines() -> list[str]:
    """Each architecture once: its name ``= its aliases``, where it comes from, and its options with their
    defaults (a user's factory takes keyword arguments; an entry point is listed, not imported)."""
    aliases: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    names = {name: " = ".join([name, ", ".join(aliases[name])]) if name in aliases else name
             for name in model_names() if name not in ALIASES}
    width = max(map(len, names.values()))
    return [f"{named:<{width}}  {model_note(name)}{_options(name)}" for name, named in names.items()]


def _options(name: str) -> str:
    options = default_model_options(name)
    if options is None:
        return " | options: its keyword arguments"
    return f" | options: {', '.join(f'{k}={v}' for k, v in options.items())}" if options else " | no options"


def dataset_lines() -> list[str]:
    width = max(map(len, DATASETS))
    return [f"{name:<{width}}  {info.description}" for name, info in DATASETS.items()]


LISTINGS = {"methods": method_lines, "models": model_lines, "datasets": dataset_lines}


def run(args: argparse.Namespace, argv: list[str]) -> int:
    print("\n".join(LISTINGS[args.command]()))
    return 0
