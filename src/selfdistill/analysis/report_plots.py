"""The report's figures, one set per dataset: runs on different datasets never share axes.

``accuracy.png`` (``accuracy-<dataset>.png`` when the runs span several datasets) holds the evaluated
top-1, NLL and ECE per epoch, one panel each, a line per group: the mean over its distinct seeds (duplicate
runs of a seed averaged first), with a band of ± one std where it has two seeds or more. Lines are
labelled by what tells the groups of that figure apart (:func:`~.groups.legend_labels`). An online run's
other networks (its peers, an online teacher, a branch) and their ensemble are drawn in its group's colour
with other line styles; the frozen teachers of a run with teachers are a horizontal line at their figure
(the mean over seeds), named in the legend.

``reliability.png`` (``reliability-<dataset>.png``) holds a diagram per group, its bins pooled over seeds.
The ECE of pooled bins is not the table's ECE (the mean of the per-seed ECEs), so a diagram of several
runs says so.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from pathlib import Path
from typing import Any

from .groups import Group, legend_labels, mean_std
from .metrics import ece_from_reliability
from .plots import Curve, Diagram, Panel, Reference, curve_figure, reliability_grid_figure, save_png
from .runs import ENSEMBLE, has_teachers, network_roles

PANELS = (("top1", "top-1 (%)"), ("nll", "NLL"), ("ece", "ECE (%)"))
STUDENT_STYLE, ENSEMBLE_STYLE = "-", "-."
ROLE_STYLES = ("--", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)))  # the other networks, in their order


# ----------------------------------------------------------------------------- curves
def group_curve(group: Group, column: str, label: str, colour: int | None = None,
                style: Any = STUDENT_STYLE) -> Curve | None:
    """A ``log.csv`` column per epoch: the mean over seeds (duplicate runs of a seed averaged first), a std
    band with two seeds or more; epochs without a value are left out; None when no run logged one."""
    per_seed: list[dict[float, float]] = []
    for runs in group.seeds().values():
        by_epoch: dict[float, list[float]] = {}
        for run in runs:
            for row in run["log"]:
                if row.get(column) is not None:
                    by_epoch.setdefault(row["epoch"], []).append(row[column])
        per_seed.append({e: statistics.fmean(v) for e, v in by_epoch.items()})
    epochs = sorted({e for curve in per_seed for e in curve})
    if not epochs:
        return None
    stats = [mean_std([c[e] for c in per_seed if e in c]) for e in epochs]
    std = [s or 0.0 for _, s in stats] if len(per_seed) > 1 else None
    return Curve(label, epochs, [m for m, _ in stats], std, colour, style)


def group_roles(group: Group) -> list[str]:
    """The other trainable networks that every run of the group trained (none but for online runs)."""
    return [r for r in network_roles(group.runs[0]) if all(r in network_roles(run) for run in group.runs)]


def group_curves(group: Group, metric: str, label: str, colour: int) -> list[Curve]:
    """The group's lines for ``metric`` (``top1``, ``nll``, ``ece``): the student's (with its std band), and
    for an online run each other network's and the ensemble's (without, so as not to hide the rest),
    labelled ``<label> · <role>``."""
    s, roles = group.split, group_roles(group)
    curves = [group_curve(group, f"{s}_{metric}", f"{label} · student" if roles else label, colour)]
    for i, role in enumerate([*roles, ENSEMBLE] if roles else []):
        style = ENSEMBLE_STYLE if role == ENSEMBLE else ROLE_STYLES[i % len(ROLE_STYLES)]
        curve = group_curve(group, f"{role}_{s}_{metric}", f"{label} · {role}", colour, style)
        curves.append(curve and dataclasses.replace(curve, std=None))
    return [c for c in curves if c is not None]


def teacher_figure(group: Group, metric: str) -> float | None:
    """The frozen teachers' ``metric`` (``teacher_<split>_<metric>`` of metrics.json: the ensemble's when
    there are several) as the mean over seeds; None for a group without teachers or a run that lacks it."""
    if not all(map(has_teachers, group.runs)):
        return None
    key, per_seed = f"teacher_{group.split}_{metric}", []
    for runs in group.seeds().values():
        values = [run.get(key) for run in runs]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return None
        per_seed.append(statistics.fmean(values))
    return statistics.fmean(per_seed)


def teacher_references(groups: list[Group], labels: list[str], metric: str) -> list[Reference]:
    """A horizontal line per distinct frozen teacher figure, named after the groups it taught (in their
    colour when it taught one group); groups whose runs had the same teachers share one line."""
    shared: dict[tuple, list[int]] = {}
    for i, group in enumerate(groups):
        if teacher_figure(group, "top1") is not None:
            weights = sorted(str(t.get("sha256") or t.get("path")) for run in group.runs for t in run["teachers"])
            shared.setdefault((group.split, *weights), []).append(i)
    references = []
    for members in shared.values():
        value = teacher_figure(groups[members[0]], metric)
        if value is not None:
            top1 = teacher_figure(groups[members[0]], "top1")
            names = ", ".join(labels[i] for i in members)
            references.append(Reference(f"teacher of {names} (top-1 {top1:.2f}%)", value,
                                        members[0] if len(members) == 1 else None))
    return references


def _seed_counts(groups: list[Group]) -> set[int]:
    return {len(g.seeds()) for g in groups}


def _title(groups: list[Group]) -> str:
    """What the figure's groups share (method, model, dataset) and how their seeds are summarised."""
    shared = {n: v for n, v in groups[0].identity().items() if all(g.identity()[n] == v for g in groups)}
    parts = [shared.get("method"), shared.get("model"), f"on {shared['dataset']}" if "dataset" in shared else None]
    counts = _seed_counts(groups)
    if counts == {1}:
        seeds = "one seed" + (" per line" if len(groups) > 1 else "")
    elif len(counts) == 1:
        seeds = f"mean ± std over {counts.pop()} seeds"
    else:
        seeds = "mean (± std with 2 or more seeds) over each line's seeds"
    return f"{' '.join(p for p in parts if p)}: {seeds}".lstrip(": ")


def _with_seeds(groups: list[Group], labels: list[str]) -> list[str]:
    """The legend labels, with each group's number of seeds where the groups' numbers differ."""
    if len(_seed_counts(groups)) == 1:
        return labels
    return [f"{label} ({n} seed{'s' if n > 1 else ''})" for label, n in zip(labels, (len(g.seeds()) for g in groups))]


def curves_figure(groups: list[Group]) -> Any:
    """A matplotlib Figure of ``groups`` (of one dataset): top-1, NLL and ECE per epoch, one panel each."""
    plain, splits = legend_labels(groups), {g.split for g in groups}
    labels = _with_seeds(groups, plain)
    panels = []
    for metric, ylabel in PANELS:
        curves = [c for i, (g, label) in enumerate(zip(groups, labels)) for c in group_curves(g, metric, label, i)]
        axis = f"{next(iter(splits))} {ylabel}" if len(splits) == 1 else f"{ylabel} on the split in each label"
        panels.append(Panel(axis, curves, teacher_references(groups, plain, metric)))
    return curve_figure(panels, _title(groups))


# ----------------------------------------------------------------------------- reliability
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


def reliability_diagram(group: Group, label: str) -> Diagram | None:
    """The group's diagram of pooled bins; of several runs, it says that its ECE is that of the pooled bins
    and, where it differs, the table's (the mean of the per-seed ECEs). None without bins."""
    pooled = pooled_reliability(group)
    if pooled is None:
        return None
    seeds = len(group.seeds())
    title = f"{label} ({seeds} seed{'s' if seeds > 1 else ''})"
    if len(group.runs) == 1:
        return Diagram(title, pooled)
    note = f"ECE of the bins pooled over {seeds} seeds" if seeds > 1 else \
        f"ECE of the bins of its {len(group.runs)} runs averaged"
    table = statistics.fmean(group.per_seed("ece"))
    if f"{table:.2f}" != f"{ece_from_reliability(pooled):.2f}":
        note += f"; the table's {table:.2f}% is the mean of per-seed ECEs"
    return Diagram(title, pooled, note)


def diagrams_figure(groups: list[Group]) -> tuple[Any, list[str]]:
    """A matplotlib Figure with a diagram per group that has bins (None when none has), and the labels of
    the groups left out."""
    diagrams, skipped = [], []
    for group, label in zip(groups, legend_labels(groups)):
        diagram = reliability_diagram(group, label)
        if diagram is None:
            skipped.append(f"`{label}`")
        else:
            diagrams.append(diagram)
    return (reliability_grid_figure(diagrams) if diagrams else None), skipped


# ----------------------------------------------------------------------------- files
def by_dataset(groups: list[Group]) -> dict[str, list[Group]]:
    """The groups of each dataset, in their order."""
    out: dict[str, list[Group]] = {}
    for group in groups:
        out.setdefault(str(group.identity()["dataset"]), []).append(group)
    return out


def file_suffixes(datasets: list[str]) -> dict[str, str]:
    """``""`` for a single dataset; else ``-<dataset>`` (characters unsafe in a file name replaced, each
    suffix distinct)."""
    if len(datasets) == 1:
        return {datasets[0]: ""}
    suffixes: dict[str, str] = {}
    for name in datasets:
        base = "-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset")
        suffix, n = base, 2
        while suffix in suffixes.values():
            suffix, n = f"{base}-{n}", n + 1
        suffixes[name] = suffix
    return suffixes


def _curves_note(groups: list[Group]) -> str:
    parts = ["evaluated top-1, NLL and ECE per epoch"]
    if any(len(g.seeds()) > 1 for g in groups):
        parts.append(", band ± std over seeds (the student's)")
    if any(group_roles(g) for g in groups):
        parts.append("; an online run's other networks dashed or dotted, their ensemble dash-dotted, in its colour")
    if any(teacher_figure(g, "top1") is not None for g in groups):
        parts.append("; dotted horizontal lines: the frozen teachers' figures (mean over seeds)")
    return "".join(parts)


def write_plots(groups: list[Group], out: Path) -> list[str]:
    """Write each dataset's ``accuracy*.png`` and ``reliability*.png`` into ``out``; the report's notes on
    them."""
    datasets = by_dataset(groups)
    suffixes = file_suffixes(list(datasets))
    notes = []
    for dataset, members in datasets.items():
        path = out / f"accuracy{suffixes[dataset]}.png"
        save_png(curves_figure(members), path)
        notes.append(f"{path}: {dataset}: {_curves_note(members)}")
        rel_path = out / f"reliability{suffixes[dataset]}.png"
        figure, skipped = diagrams_figure(members)
        if figure is not None:
            save_png(figure, rel_path)
            notes.append(f"{rel_path}: {dataset}: reliability diagram per group, bins pooled over seeds (pale bars: "
                         "few images)")
        if skipped:
            notes.append(f"{rel_path.name} leaves out {', '.join(skipped)}: some of their metrics.json have no "
                         f"reliability bins (runs of older versions) or bins of another size")
    return notes
