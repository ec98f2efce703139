"""Tables and plots from run directories, merging only runs that are seeds of one experiment.

A finished run directory holds ``config.yaml`` (the resolved config), ``log.csv`` (one row per epoch)
and ``metrics.json`` (the final evaluation). A run is evaluated on the test set or, with
``data.validation_split``, on a held-out validation split: ``metrics.json`` names it in ``eval_split``
(``test`` or ``val``; runs of older versions have no ``eval_split`` and ``test_*`` keys) and the
metrics are ``<split>_top1``, ``<split>_nll``, ``<split>_ece``.

Runs are grouped by their whole resolved config except the seed and the fields that change results
only as another seed would (:data:`selfdistill.config.REPORT_IGNORED_FIELDS`). A group's row shows
dataset, model, method and split, every config field whose value differs between the groups of the
report, the number of *distinct* seeds and mean ± std over those seeds (std only with two or more).
Two runs of one group with the same seed are flagged in a note and averaged into one value for that
seed (in the table, the accuracy curves and the pooled reliability bins), so a repeated seed never
counts twice nor shrinks the std.

Runs trained with frozen teachers (``teachers`` in ``metrics.json``) also record their fidelity to
them (``<split>_agreement``, ``<split>_teacher_kl``) and the teachers' own figures
(``teacher_<split>_*``); when a report holds such runs, the table adds mean ± std over seeds of top-1
agreement, predictive KL(teacher || student), and the teacher's (ensemble's) top-1 and non-target
entropy, each seed's student measured against its own teacher. Groups without teachers show ``—``
there, and a report without any teacher has no such columns.

Runs of online distillation trained other networks besides the student (``networks`` in
``metrics.json``, by role: ``peer1``, ``teacher``, ``branch``, ...) and record each one's figures
(``<role>_<split>_top1``) and those of the ensemble of all of them (``ensemble_<split>_top1``, the mean
of their probabilities). When a report holds such runs, the table adds, after the fidelity columns,
mean ± std over seeds of each role's top-1 (one column per role found in any run) and of the
ensemble's; groups without that network show ``—``. The other columns stay the student's.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..config import REPORT_IGNORED_FIELDS, Config, parse_yaml
from ..engine.validate import resolve
from ..errors import UserError, one_line
from ..fileio import atomic_write_text
from .plots import Curve, curve_panels, reliability_grid

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
IDENTITY_KEYS = ("data.dataset", "model.name", "method.name")  # always shown, as dataset, model, method
SHORT_NAMES = {"optim.lr": "lr", "data.batch_size": "batch size", "train.epochs": "epochs",
               "data.label_noise": "label noise", "data.train_subset": "train subset",
               "data.validation_split": "val images", "run.device": "device", "run.processes": "processes",
               "run.bf16": "bf16", "run.channels_last": "channels_last"}
MISSING = object()  # a field the group's config does not have (another method's option)


# ----------------------------------------------------------------------------- reading runs
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


def _read_text(run: Path, name: str) -> str:
    path = run / name
    if not path.is_file():
        raise UserError(f"{run}: {name} is missing; a finished run directory holds config.yaml, log.csv and "
                        f"metrics.json")
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"{run}: cannot read {name} ({exc.strerror or one_line(exc)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{run}: {name} is not UTF-8 text") from None


def _read_metrics(run: Path) -> dict[str, Any]:
    where = f"{run}: metrics.json"
    try:
        metrics = json.loads(_read_text(run, "metrics.json"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{where} must hold a JSON object, found {type(metrics).__name__}")
    split = eval_split(metrics)
    if not isinstance(split, str) or not split.isidentifier():
        raise UserError(f"{where}: eval_split={split!r} is not a split name such as 'test' or 'val'")
    teachers = metrics.get("teachers") or []
    if not (isinstance(teachers, list) and all(isinstance(t, dict) for t in teachers)):
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
            raise UserError(f"{where}: '{key}' is {metrics[key]!r}, not a finite number")
    if "reliability" in metrics:
        _check_reliability(where, metrics["reliability"])
    return metrics


def _check_reliability(where: str, rel: Any) -> None:
    bins = rel.get("bins") if isinstance(rel, dict) else None
    ok = isinstance(bins, int) and not isinstance(bins, bool) and bins >= 1
    for key in ("count", "confidence_sum", "correct"):
        values = rel.get(key) if ok else None
        ok = ok and isinstance(values, list) and len(values) == bins and all(map(_finite, values))
    if not ok:
        raise UserError(f"{where}: 'reliability' must be {{bins, count, confidence_sum, correct}} with one number "
                        f"per bin")


def _read_log(run: Path, split: str) -> list[dict[str, float | None]]:
    try:
        rows = list(csv.DictReader(_read_text(run, "log.csv").splitlines()))
    except csv.Error as exc:
        raise UserError(f"{run}: log.csv is not a readable CSV file ({one_line(exc)})") from None
    if not rows:
        raise UserError(f"{run}: log.csv has no epoch rows (not the log of a finished run)")
    missing = [c for c in ("epoch", f"{split}_top1") if c not in rows[0]]
    if missing:
        raise UserError(f"{run}: log.csv has no '{missing[0]}' column (not the log of a finished selfdistill run)")
    out = []
    for number, row in enumerate(rows, start=2):
        try:
            out.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
        except (TypeError, ValueError):
            bad = next(k for k, v in row.items() if not _parses(v))
            raise UserError(f"{run}: log.csv line {number}, column '{bad}': {row[bad]!r} is not a number") from None
    return out


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
        return resolve([raw]).to_dict()
    except UserError as exc:
        raise UserError(f"{run}: config.yaml: {exc}") from None


def load_run(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a finished run plus ``log`` (its ``log.csv`` rows, numbers or None),
    ``config`` (the resolved config as a dict) and ``run_dir``; anything malformed is a UserError."""
    run = Path(path)
    metrics = _read_metrics(run)
    metrics["log"] = _read_log(run, eval_split(metrics))
    metrics["config"] = _read_config(run)
    metrics["run_dir"] = str(run)
    return metrics


def find_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every finished run (a directory with ``metrics.json``) at or below the given paths, each once."""
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
    return [load_run(d) for d in found.values()]


# ----------------------------------------------------------------------------- grouping
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists become tuples (comparable, hashable)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = _freeze(value)
    return out


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(map(_freeze, value))
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


def run_fields(run: dict[str, Any]) -> dict[str, Any]:
    """What the config does not say but the run's numbers depend on: the kind of device (``auto``
    resolves differently on each machine), the precision it chose there, and the number of processes
    (each trains on its own shard, with its own batch-norm statistics)."""
    return {"run.device": str(run.get("device", "?")).split(":")[0], "run.processes": run.get("world_size", 1),
            "run.bf16": run.get("amp"), "run.channels_last": run.get("channels_last")}


def _ignored(key: str) -> bool:
    """Fields left out of grouping: those that do not change results, and the teachers' paths (each seed's
    student usually has the teacher of its own seed; a path names a run, not a setting); the teachers'
    architectures stay (``teachers.model``)."""
    return any(key == f or key.startswith(f"{f}.") for f in REPORT_IGNORED_FIELDS)


def grouping_fields(run: dict[str, Any]) -> dict[str, Any]:
    """The run's flattened config fields that tell experiments apart (see :func:`_ignored`); the teachers
    are their architectures, as the run resolved them (``metrics.json``)."""
    config = {k: v for k, v in run["config"].items() if k != "teachers"}
    sources = run.get("teachers") or run["config"].get("teachers") or []
    if sources:
        config["teachers"] = tuple(str(t.get("model")) for t in sources)
    return {k: v for k, v in flatten(config).items() if not _ignored(k)}


@dataclass
class Group:
    """Runs whose configs agree on everything but the seed and the ignored fields."""

    config: dict[str, Any]  # the flattened config without the ignored fields
    split: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # the distinguishing fields (MISSING where absent)
    label: str = ""

    def identity(self) -> dict[str, Any]:
        dataset, model, method = (self.config[k] for k in IDENTITY_KEYS)
        return {"dataset": dataset, "model": model, "method": method, "split": self.split}

    def seeds(self) -> dict[int, list[dict[str, Any]]]:
        """The runs of each distinct seed."""
        out: dict[int, list[dict[str, Any]]] = {}
        for run in self.runs:
            out.setdefault(run["config"]["train"]["seed"], []).append(run)
        return out

    def per_seed(self, metric: str) -> list[float]:
        """One value per distinct seed (duplicates of a seed averaged)."""
        return [statistics.fmean(eval_metric(r, metric) for r in runs) for runs in self.seeds().values()]


def group_runs(runs: list[dict[str, Any]]) -> list[Group]:
    """Groups of comparable runs, each with its distinguishing fields and a label, sorted by those."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        flat = grouping_fields(run)
        flat.update(run_fields(run))
        key = (eval_split(run), *sorted(flat.items(), key=lambda kv: kv[0]))
        groups.setdefault(key, Group(flat, eval_split(run))).runs.append(run)
    result = list(groups.values())
    keys = _distinguishing_keys(result)
    for group in result:
        group.fields = {k: group.config.get(k, MISSING) for k in keys}
    _label(result)
    return sorted(result, key=lambda g: [_sort_key(v) for v in (*g.identity().values(), *g.fields.values())])


def _distinguishing_keys(groups: list[Group]) -> list[str]:
    """Config keys whose values differ between groups, in config order, without the identity keys.

    A key that only some groups have (another method's option) and that has one value wherever it is
    present is left out unless it is needed to tell two groups apart."""
    sections = [f.name for f in dataclasses.fields(Config)] + ["run"]
    seen = dict.fromkeys(k for g in groups for k in g.config if k not in IDENTITY_KEYS)
    order = sorted(seen, key=lambda k: sections.index(k.split(".")[0]))
    keys = [k for k in order if len({_hashable(g.config.get(k, MISSING)) for g in groups}) > 1]
    for key in [k for k in keys if len({g.config[k] for g in groups if k in g.config}) == 1]:
        rest = [k for k in keys if k != key]
        if _all_distinct(groups, rest):
            keys = rest
    return keys


def _hashable(value: Any) -> Any:
    return ("<missing>",) if value is MISSING else value


def _all_distinct(groups: list[Group], keys: list[str]) -> bool:
    shown = {(*g.identity().values(), *(_hashable(g.config.get(k, MISSING)) for k in keys)) for g in groups}
    return len(shown) == len(groups)


def _sort_key(value: Any) -> tuple:
    """Absent, then None, then numbers by value, then anything else by its text."""
    if value is MISSING or value is None:
        return (0 if value is MISSING else 1, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (2, value, "")
    return (3, 0, str(value))


def column_name(key: str) -> str:
    """A short header for a dotted config key where the short form is unambiguous."""
    return SHORT_NAMES.get(key, key)


def show(value: Any) -> str:
    """A config value as a table cell."""
    if value is MISSING:
        return "—"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(show, value)) + "]"
    return str(value)


def _label(groups: list[Group]) -> None:
    """Label each group by what tells it apart: varying identity parts, then ``field=value`` (a field that
    is unset, ``None``, or that the group lacks is left out of its label)."""
    names = list(groups[0].identity()) if groups else []
    varying = [n for n in names if len({g.identity()[n] for g in groups}) > 1]
    for g in groups:
        parts = [str(g.identity()[n]) for n in varying]
        parts += [f"{column_name(k)}={show(v)}" for k, v in g.fields.items() if v is not MISSING and v is not None]
        g.label = " ".join(parts) or g.identity()["method"]


def _common_title(groups: list[Group]) -> str:
    shared = {n: v for n, v in groups[0].identity().items() if all(g.identity()[n] == v for g in groups)}
    parts = [shared.get("method"), shared.get("model"), f"on {shared['dataset']}" if "dataset" in shared else None]
    return " ".join(p for p in parts if p)


# ----------------------------------------------------------------------------- the table
def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean, and the sample std when there are two or more values (else None)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summary_row(group: Group) -> dict[str, Any]:
    """A group's table row: identity, distinguishing fields, distinct seeds, mean ± std per metric."""
    row: dict[str, Any] = {**group.identity(), "fields": dict(group.fields), "label": group.label,
                           "seeds": len(group.seeds()), "runs": len(group.runs)}
    for metric, _, _ in METRIC_COLUMNS:
        row[metric] = mean_std(group.per_seed(metric))
    with_teachers = all(map(has_teachers, group.runs))
    for metric, _, _ in FIDELITY_COLUMNS:
        row[metric] = mean_std(group.per_seed(metric)) if with_teachers else None
    roles = [r for r in network_roles(group.runs[0]) if all(r in network_roles(run) for run in group.runs)]
    for role in [*roles, ENSEMBLE] if roles else []:
        row[NETWORK_PREFIX + role] = mean_std(group.per_seed(NETWORK_PREFIX + role))
    return row


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group of comparable runs (see the module docstring)."""
    return [summary_row(g) for g in group_runs(runs)]


def table_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """The metric columns: top-1, NLL, ECE, the fidelity columns when a row has teachers, the other networks'
    top-1 (each role in the order the rows first have it, then the ensemble) when a row has them, then speed."""
    fidelity = [c for c in FIDELITY_COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    ensemble = NETWORK_PREFIX + ENSEMBLE
    roles = dict.fromkeys(k for row in rows for k in row if k.startswith(NETWORK_PREFIX) and k != ensemble)
    networks = [(k, f"{k[len(NETWORK_PREFIX):]} top-1 %", 2) for k in [*roles, ensemble] if roles]
    return [*METRIC_COLUMNS[:len(SPLIT_METRICS)], *fidelity, *networks, *METRIC_COLUMNS[len(SPLIT_METRICS):]]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`summarize` rows, with a column per distinguishing field."""
    fields = list(rows[0]["fields"]) if rows else []
    columns = table_columns(rows)
    header = ["dataset", "model", "method", "split", *map(column_name, fields), "seeds",
              *(label for _, label, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in ("dataset", "model", "method", "split")]
        cells += [show(row["fields"][k]) for k in fields] + [str(row["seeds"])]
        for metric, _, digits in columns:
            if row.get(metric) is None:  # a group without teachers, or without that network
                cells.append("—")
                continue
            mean, std = row[metric]
            cells.append(f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fidelity_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the fidelity columns mean, when the table has them."""
    with_teachers = [row.get("agreement") is not None for row in rows]
    if not any(with_teachers):
        return []
    return ["`agree %`: top-1 agreement of student and teacher; `KL(T‖S)`: predictive KL(teacher ‖ student) "
            "in nats; `T top-1 %`, `T non-target H`: the teacher's own top-1 and the entropy (nats) of its "
            "distribution over the non-target classes; several teachers: their ensemble (mean of probabilities); "
            "each seed against its own teacher" + ("" if all(with_teachers) else "; `—`: trained without a teacher")]


def network_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the other networks' columns mean, when the table has them."""
    keys = [k for k, _, _ in table_columns(rows) if k.startswith(NETWORK_PREFIX)]
    if not keys:
        return []
    blank = any(row.get(k) is None for row in rows for k in keys)
    return ["`<role> top-1 %`: the top-1 of a network trained with the student in an online run (a peer, an "
            "online teacher or a branch; the other columns are the student's); `ensemble top-1 %`: the mean of "
            "the probabilities of all of a run's trainable networks" + ("; `—`: no such network" if blank else "")]


def duplicate_notes(groups: list[Group]) -> list[str]:
    """A note per seed that more than one run of a group used."""
    notes = []
    for group in groups:
        for seed, runs in group.seeds().items():
            if len(runs) > 1:
                dirs = ", ".join(r["run_dir"] for r in runs)
                notes.append(f"duplicate seed {seed} in `{group.label}`: {dirs}; counted once in `seeds`, its "
                             f"{len(runs)} runs averaged into one value before the mean ± std over seeds")
    return notes


# ----------------------------------------------------------------------------- plots
def accuracy_curve(group: Group) -> Curve:
    """The evaluated top-1 per epoch: mean over seeds (duplicates averaged first), std band with 2+ seeds."""
    column = f"{group.split}_top1"
    per_seed: list[dict[float, float]] = []
    for runs in group.seeds().values():
        by_epoch: dict[float, list[float]] = {}
        for run in runs:
            for row in run["log"]:
                if row.get(column) is not None:
                    by_epoch.setdefault(row["epoch"], []).append(row[column])
        per_seed.append({e: statistics.fmean(v) for e, v in by_epoch.items()})
    epochs = sorted({e for curve in per_seed for e in curve})
    stats = [mean_std([c[e] for c in per_seed if e in c]) for e in epochs]
    std = [s or 0.0 for _, s in stats] if len(per_seed) > 1 else None
    return Curve(group.label, epochs, [m for m, _ in stats], std)


def plot_accuracy(groups: list[Group], path: Path) -> None:
    """``accuracy.png``: one line per group with its ± std band over seeds, x = epoch."""
    splits = {g.split for g in groups}
    ylabel = f"{splits.pop()} top-1 (%)" if len(splits) == 1 else "top-1 (%) on the split in each label"
    title = f"{_common_title(groups)}: mean ± std over seeds".lstrip(": ")
    curve_panels(path, [(ylabel, [accuracy_curve(g) for g in groups])], title)


def pooled_reliability(group: Group) -> dict[str, Any] | None:
    """The group's reliability bins summed over seeds (duplicates averaged), or None when a run has none
    or the runs' bin counts differ."""
    rels = [[r.get("reliability") for r in runs] for runs in group.seeds().values()]
    flat = [rel for seed in rels for rel in seed]
    if any(rel is None for rel in flat) or len({rel["bins"] for rel in flat}) != 1:
        return None
    bins = flat[0]["bins"]
    pooled: dict[str, Any] = {"bins": bins}
    for key in ("count", "confidence_sum", "correct"):
        pooled[key] = [sum(sum(rel[key][i] for rel in seed) / len(seed) for seed in rels) for i in range(bins)]
    return pooled


def plot_reliability(groups: list[Group], path: Path) -> list[str]:
    """``reliability.png``: one diagram per group that has bins (none: no file); notes on those left out."""
    diagrams, skipped = [], []
    for group in groups:
        pooled = pooled_reliability(group)
        if pooled is None:
            skipped.append(f"`{group.label}`")
        else:
            seeds = len(group.seeds())
            diagrams.append((f"{group.label} ({seeds} seed{'s' if seeds > 1 else ''})", pooled))
    notes = []
    if diagrams:
        reliability_grid(path, diagrams)
        notes.append(f"{path}: reliability diagram per group, bins pooled over seeds (pale bars: few images)")
    if skipped:
        notes.append(f"reliability.png leaves out {', '.join(skipped)}: some of their metrics.json have no "
                     f"reliability bins (runs of older versions) or bins of another size")
    return notes


def build_report(paths: list[str], out: Path | None, plots: bool = True) -> str:
    """The markdown report (table and notes) of the runs under ``paths``; with ``out``, also
    ``report.md`` and, with ``plots``, ``accuracy.png`` and ``reliability.png`` in it."""
    groups = group_runs(find_runs(paths))
    rows = [summary_row(g) for g in groups]
    table = markdown_table(rows)
    notes = ["final epoch; mean ± std over distinct seeds (std with 2 or more); `split`: test set, or `val`, "
             "a validation split held out of the training set", *fidelity_notes(rows), *network_notes(rows),
             *duplicate_notes(groups)]
    if out is None:
        return _document(table, notes)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            plot_accuracy(groups, out / "accuracy.png")
            notes.append(f"{out / 'accuracy.png'}: evaluated top-1 per epoch, band ± std over seeds")
            notes += plot_reliability(groups, out / "reliability.png")
        text = _document(table, notes)
        atomic_write_text(out / "report.md", text)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report there ({exc.strerror or one_line(exc)})") from None
    return text


def _document(table: str, notes: list[str]) -> str:
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
