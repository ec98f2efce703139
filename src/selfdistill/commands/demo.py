"""``selfdistill demo``: cross-entropy and DLB side by side on the bundled Fashion-MNIST slice.

Both runs use the same model, recipe, seed and number of epochs (DLB forwards twice the images per
step, as in the paper). The demo prints a table of accuracy and calibration, writes it to
``summary.md`` and plots test top-1, NLL and ECE per epoch into ``test_accuracy.png``. It is one seed
on a 6,000-image slice, so it says so: a difference of a point or so is within seed noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..analysis.plots import Curve, Panel, curve_panels
from ..analysis.runs import eval_metric, eval_split, load_run
from ..engine import train
from ..engine.validate import resolve
from ..errors import OutputError
from ..fileio import atomic_write_text, unused_path

RECIPE = {
    "data": {"dataset": "fashion-mnist-mini", "batch_size": 64},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
}
CAVEAT = ("One seed on a 6,000-image slice: differences of a point or so are within seed noise; compare "
          "several seeds with `selfdistill report` before drawing conclusions.")
PANELS = (("top1", "top-1 (%)"), ("nll", "NLL"), ("ece", "ECE (%)"))


def plot_runs(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Evaluated top-1, NLL and ECE per epoch, one panel each, one line per labelled run."""
    panels = []
    for metric, ylabel in PANELS:
        curves = []
        for label, run in runs.items():
            column = f"{eval_split(run)}_{metric}"
            rows = [r for r in run["log"] if r.get(column) is not None]
            curves.append(Curve(label, [r["epoch"] for r in rows], [r[column] for r in rows]))
        split = eval_split(next(iter(runs.values())))
        panels.append(Panel(f"{split} {ylabel}", curves))
    curve_panels(path, panels, title)


def summary_table(runs: dict[str, dict[str, Any]]) -> str:
    lines = ["| method | top-1 % | NLL | ECE % | images/s | wall s |", "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {eval_metric(r, 'top1'):.2f} | {eval_metric(r, 'nll'):.3f} | "
                     f"{eval_metric(r, 'ece'):.2f} | {r['images_per_s']:,.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def run_demo(out: str | None, epochs: int, model: str, seed: int, threads: int | str = "auto") -> Path:
    """Train CE and DLB into ``out`` (or a fresh ``selfdistill-demo`` folder); table, summary and plot."""
    folder = Path(out) if out else unused_path("selfdistill-demo")
    configs = {m: resolve([RECIPE, {"method": {"name": m}, "model": {"name": model},
                                     "train": {"epochs": epochs, "seed": seed, "threads": threads}}])
               for m in ("ce", "dlb")}
    print(f"selfdistill demo: CE and DLB, {model} on fashion-mnist-mini (6,000 train / 2,000 test images), "
          f"{epochs} epochs each, seed {seed} -> {folder}", flush=True)
    runs = {}
    for name, config in configs.items():
        print(f"\n== {name} ==", flush=True)
        train(config, folder / name)
        runs[name] = load_run(folder / name)
    plot = folder / "test_accuracy.png"
    table = summary_table(runs)
    try:
        plot_runs({n.upper(): r for n, r in runs.items()}, plot,
                  f"{model} on fashion-mnist-mini, {epochs} epochs, seed {seed}")
        atomic_write_text(folder / "summary.md", f"{table}\n\n{CAVEAT}\n")
    except OSError as exc:
        raise OutputError(f"could not write the demo's plot and summary in {folder}: {exc.strerror or exc}; the "
                          "two runs are complete there") from None
    print(f"\n{table}\n\n{CAVEAT}\nimages/s counts every image forwarded (DLB: new + replayed). "
          f"Plot (top-1, NLL, ECE per epoch): {plot}")
    return folder


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.threads != "auto":
        resolve([{"train": {"threads": args.threads}}])  # the same check as train's
    run_demo(args.out, args.epochs, args.model, args.seed, threads=args.threads)
    return 0
