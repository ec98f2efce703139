"""What ``selfdistill eval`` writes and prints: ``eval.json``, ``per_class.csv`` (a class's label number, its
name where the dataset has names, its image count and top-1), ``reliability.png``, and the summary on the
terminal, which names each class where it can (by number otherwise)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..errors import UserError, one_line
from ..fileio import atomic_write_json, atomic_write_text, make_output_folder
from .plots import reliability_figure

FILES = ("eval.json", "per_class.csv", "reliability.png")
LINE_WIDTH = 100  # of the per-class lines on the terminal


def per_class_csv(result: dict[str, Any]) -> str:
    """``per_class.csv``: ``class,name,count,accuracy`` (the name empty where the dataset has none, the accuracy
    where the class has no image)."""
    names = result.get("class_names") or [""] * len(result["per_class_count"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "name", "count", "accuracy"])
    for label, (name, n, acc) in enumerate(zip(names, result["per_class_count"], result["per_class_accuracy"])):
        writer.writerow([label, name, n, "" if acc is None else f"{acc:.4f}"])
    return buffer.getvalue()


def per_class_lines(result: dict[str, Any]) -> list[str]:
    """The per-class top-1 on the terminal: ``label name: accuracy`` cells (``label: accuracy`` without names),
    as many to a line as fit in :data:`LINE_WIDTH`."""
    accuracies = result["per_class_accuracy"]
    names = result.get("class_names")
    width = len(str(len(accuracies) - 1))
    labels = [f"{k:>{width}}" + (f" {names[k]}" if names else "") for k in range(len(accuracies))]
    side = max(map(len, labels))
    shown = ["—" if acc is None else f"{acc:5.1f}" for acc in accuracies]
    cells = [f"{label + ':':<{side + 1}} {value:>5}" for label, value in zip(labels, shown)]
    per_line = max(1, (LINE_WIDTH - 2) // (side + 10))
    return ["  " + "   ".join(cells[i:i + per_line]).rstrip() for i in range(0, len(cells), per_line)]


def write_results(folder: Path, result: dict[str, Any]) -> None:
    """``eval.json``, ``per_class.csv`` and ``reliability.png`` in ``folder`` (created if needed; never through
    a symlink at ``folder``, see :func:`~selfdistill.fileio.make_output_folder`)."""
    title = f"{result['model']} on {result['dataset']} {result['split']} ({result['images']:,} images)"
    try:
        make_output_folder(folder, "--out")
        atomic_write_json(folder / "eval.json", result)
        atomic_write_text(folder / "per_class.csv", per_class_csv(result))
        reliability_figure(folder / "reliability.png", result["reliability"], title)
    except OSError as exc:
        raise UserError(f"--out {folder}: cannot write the results there ({exc.strerror or one_line(exc)}); "
                        f"choose another --out") from None


def format_eval(result: dict[str, Any]) -> str:
    """What ``selfdistill eval`` prints: the metrics, per-class accuracy, where the files went."""
    role = f" (role {result['role']})" if result.get("run_roles") and len(result["run_roles"]) > 1 else ""
    lines = [f"{result['target']}{role}: {result['model']} on {result['dataset']} {result['split']}",
             f"  top-1   {result['top1']:6.2f} %",
             f"  top-{result['top5_k']}   {result['top5']:6.2f} %",
             f"  NLL     {result['nll']:8.4f}",
             f"  ECE     {result['ece']:6.2f} %",
             f"  images  {result['images']:,}",
             *_format_teachers(result),
             "per-class top-1 % (class: accuracy):"]
    lines += per_class_lines(result)
    lines.append(f"wrote {', '.join(FILES)} to {result['out']}")
    if role:
        others = ", ".join(r for r in result["run_roles"] if r != result["role"])
        lines.append(f"the run's other networks: {others} (`selfdistill eval RUN_DIR --role ROLE` evaluates one)")
    return "\n".join(lines)


def _format_teachers(result: dict[str, Any]) -> list[str]:
    """The fidelity and teacher lines of :func:`format_eval` (none without teachers)."""
    if "teachers" not in result:
        return []
    sources = ", ".join(f"{t['model']} ({t['path']})" for t in result["teachers"])
    who = f"teacher {sources}" if len(result["teachers"]) == 1 else \
        f"ensemble of {len(result['teachers'])} teachers (mean of probabilities): {sources}"
    lines = [f"fidelity to the {who}:",
             f"  agreement  {result['agreement']:6.2f} %   (same top-1 class)",
             f"  KL         {max(result['teacher_kl'], 0.0):8.4f}   (KL(teacher || model), nats)",
             "the teacher's own:" if len(result["teachers"]) == 1 else "the ensemble's own:",
             f"  top-1   {result['teacher_top1']:6.2f} %",
             f"  NLL     {result['teacher_nll']:8.4f}",
             f"  ECE     {result['teacher_ece']:6.2f} %",
             f"  entropy {result['teacher_entropy']:8.4f} nats (non-target classes: "
             f"{result['teacher_nontarget_entropy']:.4f})"]
    if "teachers_top1" in result:
        lines.append("  members' top-1 %: " + ", ".join(f"{v:.2f}" for v in result["teachers_top1"]))
    return lines
