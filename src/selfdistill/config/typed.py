"""Dataclasses built from plain mappings (YAML, ``--set``), every key checked and every value coerced to its
field's type: an unknown key is a ``UserError`` with a "did you mean", a wrong type names the field and what
is allowed, and a number field takes every spelling Python's ``int()`` / ``float()`` accepts, within what
torch can hold: an integer in 64 bits, a float within float32's range."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from ..errors import UserError, did_you_mean, require

# the largest float32: every float setting reaches torch, which computes in float32 (or less), and a larger
# one (`--lr 1e300`) fails there with "value cannot be converted to type float without overflow"
FLOAT32_MAX = 3.4028234663852886e38


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, checking every key and coercing every value."""
    if not isinstance(values, dict):
        raise UserError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UserError(f"unknown config key {path!r}{did_you_mean(key, names)}; allowed: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except UserError:
                continue
        allowed = " or ".join(_type_name(o) for o in options)
        raise UserError.bad_value(path, value, allowed)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        require(isinstance(value, list), path, value, f"a list of {_type_name(item)}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        require(isinstance(value, dict), path, value, "a mapping")
        return dict(value)
    if hint is bool:
        require(isinstance(value, bool), path, value, "true or false")
        return value
    if hint is int:
        number = _integer(_number(value))
        require(number is not None, path, value, "an integer")
        require(abs(number) < 2**63, path, value, "an integer within ±2**63 (64 bits)")
        return number
    if hint is float:
        number = _finite(_number(value))
        require(number is not None, path, value, "a finite number")
        require(abs(number) <= FLOAT32_MAX, path, value, f"a number within ±{FLOAT32_MAX:.4g} (float32, the "
                "precision training computes in)")
        return number
    if origin is Literal:
        choices = typing.get_args(hint)
        if not (isinstance(value, str) and value in choices):
            raise UserError.bad_value(path, value, ", ".join(map(str, choices)), map(str, choices))
        return value
    if hint is str:
        require(isinstance(value, str), path, value, "a string")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {path}")  # a bug in this file, not user input


def _number(value: Any) -> int | float | None:
    """``value`` as a number: ints and floats as they are, strings as Python's ``int()``/``float()`` read
    them (``"1e-3"``, ``"1_000"``, ``" 5 "``); anything else (booleans included) is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except (ValueError, OverflowError):
                continue
    return None


def _integer(number: int | float | None) -> int | None:
    """``number`` as an int if it is a whole number (``3.0`` is 3), else None."""
    if isinstance(number, float):
        return int(number) if math.isfinite(number) and number.is_integer() else None
    return number


def _finite(number: int | float | None) -> float | None:
    """``number`` as a finite float, else None (an int too large for a float too)."""
    try:
        result = None if number is None else float(number)
    except OverflowError:
        return None
    return result if result is not None and math.isfinite(result) else None


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint)).replace("NoneType", "null")
