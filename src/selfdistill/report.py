"""Tables and plots from run directories (``metrics.json`` + ``log.csv``)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

GROUP_KEYS = ("dataset", "model", "method", "label_noise", "epochs")
METRIC_COLUMNS = (("test_top1", "top-1 %", 2), ("test_nll", "NLL", 3), ("test_ece", "ECE %", 2),
                  ("images_per_s", "images/s", 0), ("wall_s", "wall s", 0))


def load_run(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a finished run plus its per-epoch ``log`` rows and its directory."""
    run = Path(path)
    metrics_file = run / "metrics.json"
    if not metrics_file.is_file():
        raise UserError(f"{run} has no metrics.json (not a finished run directory)")
    metrics = json.loads(metrics_file.read_text())
    with (run / "log.csv").open() as handle:
        metrics["log"] = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                          for row in csv.DictReader(handle)]
    metrics["run_dir"] = str(run)
    return metrics


def find_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every finished run at or below the given paths."""
    runs = []
    for path in paths:
        p = Path(path)
        dirs = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        runs += [load_run(d) for d in dirs]
    if not runs:
        raise UserError(f"no finished runs (metrics.json) under {', '.join(map(str, paths))}")
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]], keys: tuple[str, ...] = GROUP_KEYS) -> list[dict[str, Any]]:
    """One row per group of runs that agree on ``keys``: mean and std of every metric, seed count."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, key))
        row["seeds"] = len(members)
        for metric, _, _ in METRIC_COLUMNS:
            row[metric] = mean_std([float(m[metric]) for m in members])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], keys: tuple[str, ...] = GROUP_KEYS) -> str:
    header = [*keys, "seeds", *(label for _, label, _ in METRIC_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in keys] + [str(row["seeds"])]
        for metric, _, digits in METRIC_COLUMNS:
            mean, std = row[metric]
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}" if row["seeds"] > 1 else f"{mean:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_test_accuracy(runs: dict[str, dict[str, Any]], path: str | Path, title: str) -> None:
    """A PNG of test top-1 per epoch and per training image seen, one line per labelled run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), dpi=110, sharey=True)
    for label, run in runs.items():
        rows = [r for r in run["log"] if r["test_top1"] is not None]
        top1 = [r["test_top1"] for r in rows]
        axes[0].plot([r["epoch"] for r in rows], top1, marker="o", markersize=3, label=label)
        axes[1].plot([r["images_seen"] / 1e3 for r in rows], top1, marker="o", markersize=3, label=label)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training images forwarded (thousands)")
    axes[0].set_ylabel("test top-1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
