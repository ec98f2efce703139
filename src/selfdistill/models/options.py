"""An architecture's options (``model.options``): typed dataclasses for ours, plain keywords for a user's.

Each of our builders carries an ``Options`` dataclass (``MLP.Options``, ``cifar_resnet(8).Options``, ...)
whose fields are the knobs its code really has, with defaults that build exactly the network the bare
name always built. A dataclass, as for a method's options, because then every key and value is checked
by the same :func:`~selfdistill.config.build_dataclass` that checks the rest of the config (unknown key
with did-you-mean, wrong type), its ``check`` adds the ranges, and ``dataclasses.asdict`` gives the full
resolved set that a run records, so that rebuilding from the record gives the same network.

A builder without an ``Options`` dataclass (``register_model``, an entry point, ``package.module:function``)
takes its options as keyword arguments. We check them against the factory's signature where it has one
(an unknown keyword is named before anything is built) and that they are plain YAML values (they are
written into the model card); their meaning is the factory's own.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

from ..config import build_dataclass
from ..errors import UserError, did_you_mean, require

# Bounds that catch typos (a width of 10**9 would ask for terabytes of memory), not what is sensible.
MAX_UNITS = 1 << 17  # an MLP's hidden layer
MAX_LAYERS = 64  # an MLP's hidden layers
MAX_CHANNELS = 1024  # the small CNN's width (its last stage has 4x that)
MAX_MULTIPLIER = 16  # a CIFAR ResNet's width multiplier


class ModelOptions:
    """Base of the options dataclasses: ``check`` adds what types alone cannot say (ranges)."""

    def check(self, where: str) -> None:
        """Raise ``UserError`` naming ``where.<field>`` for a value out of range."""


@dataclasses.dataclass
class NoOptions(ModelOptions):
    """The options of an architecture that has none: any key is refused."""


def check_rate(value: float, where: str) -> None:
    require(0.0 <= value < 1.0, where, value, "a probability in [0, 1)")


def check_dataclass_options(cls: type, values: Any, arch: str, where: str) -> dict[str, Any]:
    """``values`` checked against options dataclass ``cls`` (of architecture ``arch``), all fields filled in."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of option names to values, got {type(values).__name__}")
    if not dataclasses.fields(cls) and values:
        first = next(iter(values))
        raise UserError(f"unknown config key {f'{where}.{first}'!r}: architecture {arch!r} takes no options")
    options = build_dataclass(cls, values, where)
    options.check(where)
    return dataclasses.asdict(options)


def _plain(value: Any, where: str) -> None:
    """Refuse anything that is not a plain YAML value (it is written into the model card)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        require(math.isfinite(value), where, value, "a finite number")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            require(isinstance(key, str), where, key, "a mapping with string keys")
            _plain(item, f"{where}.{key}")
    else:
        raise UserError(f"{where}: a {type(value).__name__} is not a plain YAML value (null, true/false, a number, "
                        "a string, or a list or mapping of those)")


def keyword_names(factory: Callable[..., Any], label: str) -> list[str] | None:
    """The keywords ``factory(num_classes, in_channels, image_size, **options)`` accepts; None for any
    (``**kwargs``, or a signature Python cannot read). ``label`` names the factory in the message if it
    cannot take the three positional arguments."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    try:
        bound = signature.bind_partial(0, 0, 0)
    except TypeError:
        raise UserError(f"{label} must take (num_classes, in_channels, image_size) as its first three arguments, "
                        f"but its signature is {signature}") from None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return [n for n, p in signature.parameters.items() if p.kind in kinds and n not in bound.arguments]


def check_keyword_options(factory: Callable[..., Any], values: Any, label: str, where: str) -> dict[str, Any]:
    """``values`` as keyword arguments for ``factory`` (named ``label`` in messages): a mapping of plain
    YAML values whose keys the factory's signature accepts."""
    allowed = keyword_names(factory, label)  # also refuses a factory that cannot take the three arguments
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of option names to values, got {type(values).__name__}")
    for key, value in values.items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise UserError(f"{where}: option name {key!r} is not a Python identifier ({label} takes them as keyword "
                            "arguments)")
        if allowed is not None and key not in allowed:
            names = ", ".join(allowed) if allowed else "none"
            raise UserError(f"unknown config key {f'{where}.{key}'!r}{did_you_mean(key, allowed)}; {label} takes "
                            f"these keyword arguments: {names}")
        _plain(value, f"{where}.{key}")
    return dict(values)
