"""Training methods by name. Adding a method is one file and one line in ``METHODS``.

A method name may combine several with ``+`` (``dlb+dsr``); its options then sit under each member's
name (``method.dlb.alpha``), while a single method takes them directly (``method.alpha``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import build_dataclass
from ..errors import UserError, did_you_mean
from .bake import BAKE
from .base import Batch, Method, Outputs, SetupContext
from .bd_kd import BDKD
from .byot import BYOT
from .ca_mkd import CAMKD
from .ce import CrossEntropy
from .crd import CRD
from .cs_kd import CSKD
from .dist import DIST
from .dkd import DKD
from .dlb import DLB, DLBOptions
from .dml import DML
from .drg import DRG
from .dsr import DSR
from .kd import KD
from .label_smoothing import LabelSmoothing
from .mix_kd import MIXKD
from .nkd import NKD
from .ps_kd import PSKD
from .sokd import SOKD
from .sp import SP
from .stack import MethodStack
from .switokd import SwitOKD
from .tf_kd_reg import TfKDReg
from .tf_kd_self import TfKDSelf
from .tf_nkd import TfNKD
from .zipf_ls import ZipfLS

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    CrossEntropy, DLB, DRG, DSR, TfNKD, ZipfLS, BAKE, LabelSmoothing, CSKD, PSKD, TfKDSelf, TfKDReg, BYOT,
    KD, DKD, DIST, NKD, SP, CRD, MIXKD, CAMKD, DML, SwitOKD, SOKD, BDKD)}
# names that stand for a combination
ALIASES = {"lightskd": ("drg+dsr", "LightSKD (2023): DRG + DSR together, the paper's full method")}


def method_names() -> list[str]:
    return [*METHODS, *ALIASES]


def _members(name: str) -> list[type[Method]]:
    name = ALIASES[name][0] if name in ALIASES else name
    parts = name.split("+")
    unknown = [p for p in parts if p not in METHODS]
    if unknown or not name:
        allowed = ", ".join(method_names())
        suggestion = did_you_mean(unknown[0], method_names()) if unknown else ""
        raise UserError(f"method.name={name!r} is not allowed{suggestion}; allowed: {allowed} (combine with +, e.g. "
                        "dlb+dsr)")
    if len(set(parts)) != len(parts):
        raise UserError.bad_value("method.name", name, "each method at most once")
    return [METHODS[p] for p in parts]


def _options(cls: type[Method], values: dict[str, Any], where: str) -> Any:
    options = build_dataclass(cls.Options, values, where)
    options.check()
    return options


def method_options(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Check ``values`` against the options of method ``name``; return every option with defaults."""
    members = _members(name)
    if len(members) == 1:
        return dataclasses.asdict(_options(members[0], values, "method"))
    allowed = {cls.name for cls in members}
    stray = [k for k in values if k not in allowed]
    if stray:
        raise UserError(f"unknown config key {f'method.{stray[0]}'!r}; options of combined methods go under each "
                        f"method's name: {', '.join(sorted(allowed))}")
    return {cls.name: dataclasses.asdict(_options(cls, values.get(cls.name, {}), f"method.{cls.name}"))
            for cls in members}


def build_method(config: dict[str, Any]) -> MethodStack:
    """The method stack for a resolved ``config.method`` (``{"name": ..., **options}``)."""
    members = _members(config["name"])
    values = {k: v for k, v in config.items() if k != "name"}
    if len(members) == 1:
        return MethodStack([members[0](_options(members[0], values, "method"))], config["name"])
    return MethodStack([cls(_options(cls, values.get(cls.name, {}), f"method.{cls.name}")) for cls in members],
                       config["name"])


__all__ = ["ALIASES", "Batch", "CrossEntropy", "DLB", "DLBOptions", "METHODS", "Method", "MethodStack", "Outputs",
           "SetupContext", "build_method", "method_names", "method_options"]
