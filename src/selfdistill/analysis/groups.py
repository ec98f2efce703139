"""Groups of runs that are seeds of one experiment, and the words that tell groups apart.

Runs are grouped by their whole resolved config except the seed and the fields that change results only as
another seed would (:data:`selfdistill.config.REPORT_IGNORED_FIELDS`); a group's fields are those that
differ between the groups of one report. :func:`legend_labels` names a group by only what tells it apart,
a method's options as ``<method>.<option>`` and only where groups of that method differ in them. The table
(:mod:`.report`) and the figures (:mod:`.report_plots`) both stand on this module.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..config import REPORT_IGNORED_FIELDS, Config
from .runs import eval_metric, eval_split

IDENTITY_KEYS = ("data.dataset", "model.name", "method.name")  # always shown, as dataset, model, method
SHORT_NAMES = {"optim.lr": "lr", "data.batch_size": "batch size", "train.epochs": "epochs",
               "data.label_noise": "label noise", "data.train_subset": "train subset",
               "data.validation_split": "val images", "run.device": "device", "run.processes": "processes",
               "run.bf16": "bf16", "run.channels_last": "channels_last"}
MISSING = object()  # a field the group's config does not have (another method's option)


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
    keys = _varying(groups, _config_keys(groups))
    for key in [k for k in keys if len({g.config[k] for g in groups if k in g.config}) == 1]:
        rest = [k for k in keys if k != key]
        if _all_distinct(groups, rest):
            keys = rest
    return keys


def _config_keys(groups: list[Group]) -> list[str]:
    """The keys of the groups' configs in config order, without the identity keys."""
    sections = [f.name for f in dataclasses.fields(Config)] + ["run"]
    seen = dict.fromkeys(k for g in groups for k in g.config if k not in IDENTITY_KEYS)
    return sorted(seen, key=lambda k: sections.index(k.split(".")[0]))


def _varying(groups: list[Group], keys: list[str]) -> list[str]:
    """The keys whose values (or absence) differ between the groups."""
    return [k for k in keys if len({_hashable(g.config.get(k, MISSING)) for g in groups}) > 1]


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


# fields that belong to a method or a model, by prefix: the field naming their owner, and whether a label
# names them after it (``dlb.alpha``); they show only where they differ between groups of the same owner
OWNED_FIELDS = {"method.": ("method.name", True), "model.options.": ("model.name", True),
                "teachers": ("method.name", False)}


def legend_labels(groups: list[Group]) -> list[str]:
    """What tells each of ``groups`` apart from the others: the identity parts that vary, then
    ``field=value`` for each other field whose value differs between them, but for a method's option (a
    model's, the teachers) only where it differs between groups of that same method (model), named
    ``<method>.<option>`` (``<model>.<option>``), so that neither a method's defaults nor two methods'
    like-named options muddle the labels. A value that is unset or ``None`` is left out."""
    names = list(groups[0].identity()) if groups else []
    varying = [n for n in names if len({g.identity()[n] for g in groups}) > 1]
    order = _config_keys(groups)
    prefixes = {k: next((p for p in OWNED_FIELDS if k.startswith(p)), "") for k in order}
    labels = []
    for g in groups:
        parts = [str(g.identity()[n]) for n in varying]
        for key in (k for k in order if g.config.get(k) is not None):
            prefix = prefixes[key]
            owner, qualified = OWNED_FIELDS[prefix] if prefix else ("", False)  # owner "": compared with all
            if _varying([h for h in groups if not owner or h.config.get(owner) == g.config[owner]], [key]):
                name = _option_name(str(g.config[owner]), key[len(prefix):]) if qualified else column_name(key)
                parts.append(f"{name}={show(g.config[key])}")
        labels.append(" ".join(parts) or g.identity()["method"])
    return labels


def _option_name(owner: str, option: str) -> str:
    """``dlb.alpha`` for the option ``alpha`` of DLB, ``mlp.hidden`` for that of an MLP; a composed method's
    options are already named by their part (``dlb+dsr``'s ``dlb.alpha``)."""
    return option if "+" in owner else f"{owner}.{option}"


def _label(groups: list[Group]) -> None:
    """Set each group's label (shown in the notes and, for a single dataset, in the plots' legends)."""
    for group, label in zip(groups, legend_labels(groups)):
        group.label = label


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean, and the sample std when there are two or more values (else None)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
