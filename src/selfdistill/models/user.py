"""Architectures from outside selfdistill: ``package.module:function`` specs and the ``selfdistill.models``
entry-point group.

A spec such as ``--model mypkg.nets:wide_mlp`` names a factory that ``importlib`` imports as written: we add
nothing to ``sys.path`` (not even the working directory, which a ``selfdistill`` console script does not
have on it either), so the module must be importable the way any Python import is: an installed package,
or a directory on ``PYTHONPATH``. A package can instead register names for its factories:

    [project.entry-points."selfdistill.models"]
    wide_mlp = "mypkg.nets:wide_mlp"

Entry points are listed once, by name only, when a name outside our own is first looked up or all names are
listed; each is imported only when its name is used, so one broken plug-in does not stop the others. Either
way the factory is called as ``factory(num_classes, in_channels, image_size, **options)`` and must return
an ``nn.Module``; every failure (the import, the attribute, the call, the result) is one-line ``UserError``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import UserError, did_you_mean, one_line

GROUP = "selfdistill.models"
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
SPEC = re.compile(rf"({_DOTTED}):({_DOTTED})")

_entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
_loaded: dict[str, Callable[..., Any]] = {}


def is_spec(name: Any) -> bool:
    """Whether ``name`` has the form ``package.module:function`` (nothing is imported)."""
    return isinstance(name, str) and SPEC.fullmatch(name) is not None


def load_spec(spec: str, where: str) -> Callable[..., Any]:
    """Import ``package.module`` and return its callable ``function`` (a dotted attribute path works too)."""
    match = SPEC.fullmatch(spec)
    if match is None:
        raise UserError(f"{where}={spec!r}: a user model is named as package.module:function")
    module_name, attribute = match.groups()
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module's own code raised while importing
        hint = "; it must be importable (an installed package, or a directory on PYTHONPATH)" \
            if isinstance(exc, ImportError) else ""
        raise UserError(f"{where}={spec!r}: cannot import module {module_name!r} "
                        f"({type(exc).__name__}: {one_line(exc)}){hint}") from None
    owner = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise UserError(f"{where}={spec!r}: {owner} has no attribute {part!r}{did_you_mean(part, names)}")
        target, owner = getattr(target, part), f"{owner}.{part}"
    if not callable(target):
        raise UserError(f"{where}={spec!r}: {owner} is a {type(target).__name__}, not a callable that builds a model")
    return target


def _discover() -> dict[str, importlib.metadata.EntryPoint]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=GROUP):
            found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
        _entry_points = found
    return _entry_points


def entry_point_names() -> list[str]:
    """The names registered in the ``selfdistill.models`` group (listed, not imported)."""
    return list(_discover())


def load_entry_point(name: str, where: str) -> Callable[..., Any] | None:
    """The factory registered as ``name`` (imported once, then cached), or None if no entry point has it."""
    if name in _loaded:
        return _loaded[name]
    ep = _discover().get(name)
    if ep is None:
        return None
    try:
        factory = ep.load()
    except Exception as exc:
        raise UserError(f"{where}={name!r}: its entry point {ep.value!r} (group {GROUP}) cannot be loaded "
                        f"({type(exc).__name__}: {one_line(exc)})") from None
    if not callable(factory):
        raise UserError(f"{where}={name!r}: its entry point {ep.value!r} (group {GROUP}) is a "
                        f"{type(factory).__name__}, not a callable that builds a model")
    _loaded[name] = factory
    return factory


def refresh_entry_points() -> None:
    """Forget the listed and loaded entry points (after installing a plug-in in a running process; tests)."""
    global _entry_points
    _entry_points = None
    _loaded.clear()


def call_factory(factory: Callable[..., Any], label: str, num_classes: int, in_channels: int, image_size: int,
                 options: dict[str, Any]) -> nn.Module:
    """``factory(num_classes, in_channels, image_size, **options)``, which must return an ``nn.Module``;
    ``label`` (e.g. ``model.name 'pkg.mod:fn'``) names it in the one-line error otherwise."""
    try:
        model = factory(num_classes, in_channels, image_size, **options)
    except Exception as exc:  # a TypeError for an unexpected keyword included
        raise UserError(f"{label} failed to build the model ({type(exc).__name__}: {one_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
    return model
