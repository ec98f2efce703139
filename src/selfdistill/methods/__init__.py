"""Training methods by name. Adding a method is one file and one line in ``METHODS``.

A method name may combine several with ``+`` (``dlb+dsr``); its options then sit under each member's
name (``method.dlb.alpha``), while a single method takes them directly (``method.alpha``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import build_dataclass
from ..errors import UserError, did_you_mean, require
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


def method_needs(name: str) -> str:
    """What method ``name`` (a combination too) asks of a run, from its members' declarations: "teacher-free",
    or how many frozen teachers it needs and how many networks it trains (``teachers_needed``, ``networks_added``)."""
    needs = [need for cls in _members(name) for need in _needs(cls)]
    return "; ".join(dict.fromkeys(needs)) or "teacher-free"


def _needs(cls: type[Method]) -> list[str]:
    needs = []
    if cls.teachers_needed == (1, 1):
        needs.append("needs a teacher")
    elif cls.teachers_needed != (0, 0):
        needs.append(f"needs {_count(*cls.teachers_needed)} teachers")
    if cls.networks_added != (0, 0):
        fewest, most = cls.networks_added  # besides the student
        needs.append(f"trains {_count(fewest + 1, None if most is None else most + 1)} networks (online)")
    return needs


def _count(fewest: int, most: int | None) -> str:
    """``2``, ``2+`` (no upper bound) or ``2-3``."""
    return f"{fewest}+" if most is None else str(fewest) if fewest == most else f"{fewest}-{most}"


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


def resolve_method(method: dict[str, Any]) -> dict[str, Any]:
    """``config.method`` as written (a name and options) checked and completed: every option with its default."""
    options = {k: v for k, v in method.items() if k != "name"}
    return {"name": method["name"], **method_options(method["name"], options)}


def check_method_fits(method: dict[str, Any], teachers: int, batch_size: int) -> None:
    """Check that a resolved ``config.method`` can run with this many teachers and this batch size."""
    stack = build_method(method)
    _check_teacher_count(method["name"], stack.teachers_needed, teachers)
    minimum = stack.min_batch_size
    require(batch_size >= minimum, "data.batch_size", batch_size,
            f"an integer >= {minimum} for method {method['name']}")


def _check_teacher_count(name: str, needed: tuple[int, int | None], given: int) -> None:
    fewest, most = needed
    if most == 0 and given:
        raise UserError(f"method {name} takes no teacher, but {given} was given (--teacher / teachers:); drop it, "
                        "or choose a method that distils one (kd, dkd, dist, ...; `selfdistill methods`)")
    if given < fewest:
        what = "a teacher" if fewest == 1 else f"at least {fewest} teachers"
        raise UserError(f"method {name} needs {what}, got {given}: add --teacher RUN_DIR (a finished run) or "
                        "--teacher PATH:ARCH (a weights file and its architecture)" + (
                            ", once per teacher" if fewest > 1 else ""))
    if most is not None and given > most:
        raise UserError(f"method {name} takes at most {most} teacher(s), got {given}")



def build_method(config: dict[str, Any]) -> MethodStack:
    """The method stack for a resolved ``config.method`` (``{"name": ..., **options}``)."""
    members = _members(config["name"])
    values = {k: v for k, v in config.items() if k != "name"}
    if len(members) == 1:
        return MethodStack([members[0](_options(members[0], values, "method"))], config["name"])
    return MethodStack([cls(_options(cls, values.get(cls.name, {}), f"method.{cls.name}")) for cls in members],
                       config["name"])


__all__ = ["ALIASES", "Batch", "CrossEntropy", "DLB", "DLBOptions", "METHODS", "Method", "MethodStack", "Outputs",
           "SetupContext", "build_method", "check_method_fits", "method_names", "method_needs", "method_options",
           "resolve_method"]
