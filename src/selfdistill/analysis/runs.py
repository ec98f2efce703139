"""Reading finished run directories: ``metrics.json`` (the final evaluation), ``log.csv`` (one row per
epoch) and ``config.yaml`` (the resolved config), each checked so that a damaged file is one ``UserError``
naming it. :func:`find_runs` reads every run under some folders and sets aside, each with its reason, those
that cannot be read, so that one damaged run does not hide the others.

A run's architecture need not be buildable here: ``report`` builds no network, so a run of a model added
with ``register_model`` in another process, or of a user's module not importable here, reads as any other
(its config keeps the options it recorded). A ``log.csv`` row without an epoch number is left out of the
run's log and counted in ``log_rows_skipped``.

A run is evaluated on the test set or, with ``data.validation_split``, on a held-out validation split:
``metrics.json`` names it in ``eval_split`` (``test`` or ``val``; runs of older versions have no
``eval_split`` and ``test_*`` keys) and the metrics are ``<split>_top1``, ``<split>_nll``, ``<split>_ece``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from ..config import parse_yaml
from ..engine.validate import resolve
from ..errors import UserError, one_line
from ..fileio import LONG_TEXT_LIMIT, METADATA_LIMIT, read_small_file

# (metric, column header, digits); the first three are read as <split>_<metric>
METRIC_COLUMNS = (("top1", "top-1 %", 2), ("nll", "NLL", 3), ("ece", "ECE %", 2),
                  ("images_per_s", "images/s", 0), ("wall_s", "wall s", 0))
SPLIT_METRICS = ("top1", "nll", "ece")
# (metric, column header, digits) of runs with teachers, shown after ECE; FIDELITY_KEYS: their metrics.json keys
FIDELITY_COLUMNS = (("agreement", "agree %", 2), ("teacher_kl", "KL(T‖S)", 4), ("teacher_top1", "T top-1 %", 2),
                    ("teacher_nontarget_entropy", "T non-target H", 3))
FIDELITY_KEYS = {"agreement": "{split}_agreement", "teacher_kl": "{split}_teacher_kl",
                 "teacher_top1": "teacher_{split}_top1",
                 "teacher_nontarget_entropy": "teacher_{split}_nontarget_entropy"}
# the metric "net.<role>" is the top-1 of an online run's <role> network (<role>_<split>_top1), "net.ensemble"
# that of the ensemble of all its trainable networks (ensemble_<split>_top1)
NETWORK_PREFIX, ENSEMBLE = "net.", "ensemble"


def eval_split(run: dict[str, Any]) -> str:
    """``test`` or ``val``: the split a run's final metrics were computed on (older runs: ``test``)."""
    return run.get("eval_split", "test")


def metric_key(split: str, name: str) -> str:
    """The ``metrics.json`` key of a metric: ``<split>_top1`` and the like, the fidelity metrics by
    :data:`FIDELITY_KEYS`, another network's top-1 (``net.<role>``) as ``<role>_<split>_top1``, others by
    their own name."""
    if name in SPLIT_METRICS:
        return f"{split}_{name}"
    if name.startswith(NETWORK_PREFIX):
        return f"{name[len(NETWORK_PREFIX):]}_{split}_top1"
    return FIDELITY_KEYS[name].format(split=split) if name in FIDELITY_KEYS else name


def eval_metric(run: dict[str, Any], name: str) -> float:
    """``top1``, ``nll`` or ``ece`` of a run on its evaluated split (and the fidelity metrics of a run with
    teachers); other metrics by their own name."""
    return float(run[metric_key(eval_split(run), name)])


def has_teachers(run: dict[str, Any]) -> bool:
    """Whether the run was trained with frozen teachers (and so records its fidelity to them)."""
    return bool(run.get("teachers"))


def network_roles(run: dict[str, Any]) -> list[str]:
    """The roles of the trainable networks an online run trained besides the student (none for other runs)."""
    return list(run.get("networks") or {})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_text(run: Path, name: str, limit: int = METADATA_LIMIT) -> str:
    """The text of a run's file; one that is missing, not a regular file, over ``limit`` bytes or not UTF-8 is
    a ``UserError``."""
    path = run / name
    if not path.exists():
        raise UserError(f"{run}: {name} is missing; a finished run directory holds config.yaml, log.csv and "
                        f"metrics.json")
    try:
        return read_small_file(path, f"{run}: {name}", limit).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{run}: {name} is not UTF-8 text") from None


# what a run records about where it ran (grouped on, see report.run_fields): (check, what is allowed)
RUN_FIELDS = {"device": (lambda v: isinstance(v, str), "a device name such as 'cpu' or 'cuda:0'"),
              "world_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
              "amp": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
              "channels_last": (lambda v: v is None or isinstance(v, bool), "true, false or null")}


def _read_metrics(run: Path) -> dict[str, Any]:
    where = f"{run}: metrics.json"
    try:
        metrics = json.loads(_read_text(run, "metrics.json"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise UserError(f"{where} is not a metrics file (JSON nested too deeply)") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{where} must hold a JSON object, found {type(metrics).__name__}")
    for key, (check, allowed) in RUN_FIELDS.items():
        if key in metrics and not check(metrics[key]):
            raise UserError(f"{where}: '{key}' is {_shorten(metrics[key])}; allowed: {allowed}")
    split = eval_split(metrics)
    if not isinstance(split, str) or not split.isidentifier():
        raise UserError(f"{where}: eval_split={_shorten(split)} is not a split name such as 'test' or 'val'")
    teachers = metrics.get("teachers") or []
    if not (isinstance(teachers, list) and all(isinstance(t, dict) and isinstance(t.get("model"), str)
                                               for t in teachers)):
        raise UserError(f"{where}: 'teachers' must be a list of {{path, model, weights, sha256}} objects")
    networks = metrics.get("networks") or {}
    if not (isinstance(networks, dict) and all(isinstance(r, str) and r.isidentifier() and r != ENSEMBLE
                                               for r in networks)):
        raise UserError(f"{where}: 'networks' must map the roles of an online run's networks (such as peer1) to "
                        "their figures")
    online = [NETWORK_PREFIX + role for role in (*networks, ENSEMBLE)] if networks else []
    for name in [c[0] for c in METRIC_COLUMNS + (FIDELITY_COLUMNS if teachers else ())] + online:
        key = metric_key(split, name)
        if key not in metrics:
            why = "a run with teachers records it" if name in FIDELITY_KEYS else \
                "an online run records it for each of its networks" if name in online else \
                "not a metrics file of a finished selfdistill run"
            raise UserError(f"{where} lacks '{key}' ({why})")
        if not _finite(metrics[key]):
            raise UserError(f"{where}: '{key}' is {_shorten(metrics[key])}, not a finite number")
    if "reliability" in metrics:
        _check_reliability(where, metrics["reliability"])
    return metrics


def _shorten(value: Any) -> str:
    """``repr(value)``, cut to a length that fits in a one-line message."""
    try:
        text = repr(value)
    except RecursionError:
        return "a value nested too deeply"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_reliability(where: str, rel: Any) -> None:
    bins = rel.get("bins") if isinstance(rel, dict) else None
    ok = isinstance(bins, int) and not isinstance(bins, bool) and bins >= 1
    for key in ("count", "confidence_sum", "correct"):
        values = rel.get(key) if ok else None
        ok = ok and isinstance(values, list) and len(values) == bins and all(map(_finite, values))
    if not ok:
        raise UserError(f"{where}: 'reliability' must be {{bins, count, confidence_sum, correct}} with one number "
                        f"per bin")


def _read_log(run: Path, split: str) -> tuple[list[dict[str, float | None]], int]:
    """The rows of ``log.csv`` as numbers (None where empty), and how many rows were left out for want of an
    epoch number."""
    try:
        rows = list(csv.DictReader(_read_text(run, "log.csv", LONG_TEXT_LIMIT).splitlines()))
    except csv.Error as exc:
        raise UserError(f"{run}: log.csv is not a readable CSV file ({one_line(exc)})") from None
    if not rows:
        raise UserError(f"{run}: log.csv has no epoch rows (not the log of a finished run)")
    missing = [c for c in ("epoch", f"{split}_top1") if c not in rows[0]]
    if missing:
        raise UserError(f"{run}: log.csv has no '{missing[0]}' column (not the log of a finished selfdistill run)")
    out, skipped = [], 0
    for number, row in enumerate(rows, start=2):
        try:
            values = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
        except (TypeError, ValueError):
            bad = next(k for k, v in row.items() if not _parses(v))
            raise UserError(f"{run}: log.csv line {number}, column '{bad}': {row[bad]!r} is not a number") from None
        epoch = values["epoch"]
        if epoch is None or not math.isfinite(epoch):
            skipped += 1
        else:
            out.append(values)
    return out, skipped


def _parses(value: Any) -> bool:
    try:
        return value in ("", None) or isinstance(float(value), float)
    except (TypeError, ValueError):
        return False


def _read_config(run: Path) -> dict[str, Any]:
    raw = parse_yaml(_read_text(run, "config.yaml"), f"{run}: config.yaml")
    if not isinstance(raw, dict):
        raise UserError(f"{run}: config.yaml must be a mapping of sections")
    try:
        return resolve([raw], recorded=True).to_dict()
    except UserError as exc:
        raise UserError(f"{run}: config.yaml: {exc}") from None


def load_run(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a finished run plus ``log`` (its ``log.csv`` rows, numbers or None; rows without
    an epoch number left out and counted in ``log_rows_skipped``), ``config`` (the resolved config as a dict)
    and ``run_dir``; anything malformed is a UserError."""
    run = Path(path)
    metrics = _read_metrics(run)
    metrics["log"], metrics["log_rows_skipped"] = _read_log(run, eval_split(metrics))
    metrics["config"] = _read_config(run)
    metrics["run_dir"] = str(run)
    return metrics


class SkippedRun(NamedTuple):
    """A run directory that could not be read, and why (a one-line message naming it and the file)."""

    run_dir: str
    reason: str


class FoundRuns(NamedTuple):
    """The runs read (see :func:`load_run`) and those set aside."""

    runs: list[dict[str, Any]]
    skipped: list[SkippedRun]

    def notes(self) -> list[str]:
        """What a report says under its table of what it could not use: the rows without an epoch number of
        each run's ``log.csv`` (left out of its accuracy curve), and each run skipped, with the reason."""
        return [*_log_notes(self.runs), *(f"skipped {_naming(s)}" for s in self.skipped)]


def find_runs(paths: Iterable[str | Path]) -> FoundRuns:
    """Every finished run (a directory with ``metrics.json``) at or below the given paths, each once; a run
    that cannot be read is set aside with its reason rather than stopping the others. A path that does not
    exist, or that holds no run, or only runs that cannot be read, is a ``UserError``."""
    paths = list(paths)
    found: dict[Path, Path] = {}  # resolved -> as found, so overlapping paths never list a run twice
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise UserError(f"{path}: no such file or directory")
        if p.is_file():
            if p.name != "metrics.json":
                raise UserError(f"{path} is a file; give run directories or folders holding them")
            p = p.parent
        dirs = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        for d in dirs:
            found.setdefault(d.resolve(), d)
    if not found:
        raise UserError(f"no finished runs (metrics.json) under {', '.join(map(str, paths))}")
    result = FoundRuns([], [])
    for d in found.values():
        try:
            result.runs.append(load_run(d))
        except UserError as exc:
            result.skipped.append(SkippedRun(str(d), str(exc)))
    if not result.runs:
        raise _no_readable_runs(paths, result.skipped)
    return result


def _log_notes(runs: list[dict[str, Any]]) -> list[str]:
    """A note per run whose ``log.csv`` has rows without an epoch number (left out of its accuracy curve)."""
    return [f"`{r['run_dir']}`: {r['log_rows_skipped']} row{'s' if r['log_rows_skipped'] > 1 else ''} of log.csv "
            "without an epoch number left out of the accuracy curve" for r in runs if r.get("log_rows_skipped")]


def _naming(skipped: SkippedRun) -> str:
    """The reason a run was skipped, starting with the run's directory."""
    reason = one_line(skipped.reason)
    return reason if reason.startswith(skipped.run_dir) else f"{skipped.run_dir}: {reason}"


def _no_readable_runs(paths: list[str | Path], skipped: list[SkippedRun]) -> UserError:
    """The one-line error when every run under ``paths`` is damaged: the reason of each (the first three)."""
    if len(skipped) == 1:
        return UserError(_naming(skipped[0]))
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return UserError(f"none of the {len(skipped)} runs under {', '.join(map(str, paths))} can be read: "
                     + "; ".join(map(_naming, skipped[:3])) + more)
