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

from pathlib import Path
from typing import Any

from ..errors import UserError, one_line
from ..fileio import atomic_write_text, make_output_folder
from .groups import Group, column_name, group_runs, mean_std, show
from .report_plots import write_plots
from .runs import (
    ENSEMBLE,
    FIDELITY_COLUMNS,
    METRIC_COLUMNS,
    NETWORK_PREFIX,
    SPLIT_METRICS,
    find_runs,
    has_teachers,
    network_roles,
)


# ----------------------------------------------------------------------------- the table
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
            notes += write_plots(groups, out)
        text = _document(table, notes)
        atomic_write_text(out / "report.md", text)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report there ({exc.strerror or one_line(exc)})") from None
    return text


def _document(table: str, notes: list[str]) -> str:
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
