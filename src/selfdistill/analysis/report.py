"""Tables and plots from run directories, merging only runs that are seeds of one experiment.

Finished run directories are read by :mod:`.runs` (``config.yaml``, ``log.csv``, ``metrics.json``); one
that cannot be read is left out and named under the table with the reason.

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

Notes and figures (:mod:`.report_plots`) name a group by :func:`legend_labels`: only what tells it apart,
a method's options as ``<method>.<option>`` and only where groups of that method differ in them.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import REPORT_IGNORED_FIELDS, Config
from ..errors import UserError, one_line
from ..fileio import atomic_write_text, make_output_folder
from .runs import (
    ENSEMBLE,
    FIDELITY_COLUMNS,
    METRIC_COLUMNS,
    NETWORK_PREFIX,
    SPLIT_METRICS,
    eval_metric,
    eval_split,
    find_runs,
    has_teachers,
    network_roles,
)

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


def build_report(paths: list[str], out: Path | None, plots: bool = True) -> str:
    """The markdown report (table and notes) of the runs under ``paths`` (one that cannot be read named in a
    note); with ``out``, also ``report.md`` and, with ``plots``, the figures of
    :func:`~.report_plots.write_plots` in it (a folder created if needed, never through a symlink at ``out``)."""
    found = find_runs(paths)
    groups = group_runs(found.runs)
    rows = [summary_row(g) for g in groups]
    table = markdown_table(rows)
    notes = ["final epoch; mean ± std over distinct seeds (std with 2 or more); `split`: test set, or `val`, "
             "a validation split held out of the training set", *fidelity_notes(rows), *network_notes(rows),
             *duplicate_notes(groups), *found.notes()]
    if out is None:
        return _document(table, notes)
    out = Path(out)
    try:
        make_output_folder(out, "--out")
        if plots:
            from .report_plots import write_plots  # imported here: it draws this module's groups

            notes += write_plots(groups, out)
        text = _document(table, notes)
        atomic_write_text(out / "report.md", text)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report there ({exc.strerror or one_line(exc)})") from None
    return text


def _document(table: str, notes: list[str]) -> str:
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
