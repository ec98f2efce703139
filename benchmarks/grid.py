"""A grid of ``selfdistill train`` runs and its mean ± std table, shared by the benchmark scripts.

Runs go to ``<out>/<model>/noise<P>/<variant>/seed<S>``; finished runs are skipped and interrupted
ones resumed, so a grid can be stopped and restarted. Jobs run in parallel threads, each a separate
process with ``train.threads=1``. Variants run in the order of their ``stage`` (a variant may read
the result of an earlier stage, e.g. Tf-KD's teacher is the CE run of the same seed).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selfdistill.analysis.runs import eval_metric, load_run


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    epochs_factor: int = 1
    sets: tuple[str, ...] = ()  # extra --set items; "{run:VARIANT}" becomes that variant's run folder
    stage: int = 0
    sets_for: Callable[[int], tuple[str, ...]] | None = None  # more --set items that depend on the seed


@dataclass
class Grid:
    out: Path
    models: list[str]
    noise: list[float]
    seeds: list[int]
    variants: list[Variant]
    epochs: int
    dataset: str = "fashion-mnist"
    batch_size: int = 64
    train_subset: int | None = None
    sets: list[str] = field(default_factory=list)

    def folder(self, model: str, noise: float, variant: str, seed: int) -> Path:
        return self.out / model / f"noise{noise:g}" / variant / f"seed{seed}"

    def command(self, model: str, noise: float, variant: Variant, seed: int) -> list[str]:
        folder = self.folder(model, noise, variant.name, seed)
        cmd = [sys.executable, "-m", "selfdistill", "train", "--out", str(folder)]
        if (folder / "config.yaml").is_file():
            return cmd + ["--resume", "--set", "train.threads=1", "--set", "train.progress=false"]
        cmd += ["--method", variant.method, "--dataset", self.dataset, "--model", model,
                "--epochs", str(self.epochs * variant.epochs_factor), "--seed", str(seed),
                "--label-noise", str(noise), "--batch-size", str(self.batch_size), "--set", "schedule.name=cosine"]
        if self.train_subset:
            cmd += ["--train-subset", str(self.train_subset)]
        for item in [*self.sets, *variant.sets, *(variant.sets_for(seed) if variant.sets_for else ())]:
            if "{run:" in item:
                other = item.split("{run:")[1].split("}")[0]
                item = item.replace(f"{{run:{other}}}", str(self.folder(model, noise, other, seed)))
            cmd += ["--set", item]
        return cmd + ["--set", "train.threads=1", "--set", "train.progress=false"]

    def run_one(self, model: str, noise: float, variant: Variant, seed: int) -> None:
        folder = self.folder(model, noise, variant.name, seed)
        if (folder / "metrics.json").is_file():
            return
        cmd = self.command(model, noise, variant, seed)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with (folder.parent / f"seed{seed}.log").open("a") as log:
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        if result.returncode != 0:
            raise RuntimeError(f"run failed ({result.returncode}): {' '.join(cmd)}; see {folder.parent}/seed{seed}.log")
        print(f"done {folder}", flush=True)

    def run(self, jobs: int) -> None:
        for stage in sorted({v.stage for v in self.variants}):
            todo = [(m, n, v, s) for s, n, m, v in itertools.product(self.seeds, self.noise, self.models, self.variants)
                    if v.stage == stage]
            todo.sort(key=lambda job: -job[2].epochs_factor)  # longest first keeps the pool busy to the end
            with ThreadPoolExecutor(jobs) as pool:
                for future in [pool.submit(self.run_one, *job) for job in todo]:
                    future.result()

    def runs(self, model: str, noise: float, variant: str) -> dict[int, dict]:
        found = {s: self.folder(model, noise, variant, s) for s in self.seeds}
        return {s: load_run(f) for s, f in found.items() if (f / "metrics.json").is_file()}


def fmt(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(grid: Grid, baseline: str = "ce") -> str:
    """One row per model, noise and variant: accuracy, calibration, cost relative to the baseline.
    Runs evaluated on a held-out validation split (``data.validation_split``) are labelled "val"."""
    on = "val " if any(s.startswith("data.validation_split=") for s in grid.sets) else ""
    head = (f"| model | noise | method | epochs | images seen (M) | seeds | {on}top-1 % | Δ {on}top-1 vs CE | "
            f"{on}NLL | {on}ECE % | images/s vs CE | train time vs CE | extra params | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, noise in itertools.product(grid.models, grid.noise):
        base = grid.runs(model, noise, baseline)
        base_speed = statistics.fmean(r["images_per_s"] for r in base.values()) if base else None
        base_time = statistics.fmean(r["train_s"] for r in base.values()) if base else None
        for variant in grid.variants:
            runs = grid.runs(model, noise, variant.name)
            if not runs:
                continue
            r = list(runs.values())
            paired = [eval_metric(runs[s], "top1") - eval_metric(base[s], "top1") for s in runs if s in base]
            delta = fmt(paired, 2) if variant.name != baseline and paired else "—"
            speed = f"{statistics.fmean(x['images_per_s'] for x in r) / base_speed:.2f}" if base_speed else "—"
            time = f"{statistics.fmean(x['train_s'] for x in r) / base_time:.2f}" if base_time else "—"
            lines.append(
                f"| {model} | {noise:g} | {variant.name} | {r[0]['epochs']} | "
                f"{statistics.fmean(x['train_images_seen'] for x in r) / 1e6:.2f} | {len(r)} | "
                f"{fmt([eval_metric(x, 'top1') for x in r], 2)} | {delta} | "
                f"{fmt([eval_metric(x, 'nll') for x in r], 3)} | {fmt([eval_metric(x, 'ece') for x in r], 2)} | "
                f"{speed} | {time} | "
                f"{r[0].get('extra_parameters', 0):,} | {max(x.get('peak_memory_mb', 0) for x in r):.0f} |")
    return "\n".join(lines)


def grid_parser(doc: str, noise: tuple[float, ...] = (0.0, 0.4)) -> argparse.ArgumentParser:
    """The options every grid script shares."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn"])
    parser.add_argument("--noise", nargs="+", type=float, default=list(noise))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-out/accuracy")
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    return parser


def run_and_report(args: argparse.Namespace, variants: list[Variant], table_file: str,
                   sets: tuple[str, ...] = ()) -> None:
    """Train the grid (unless --table-only), then write and print its table."""
    grid = Grid(Path(args.out), args.models, args.noise, args.seeds, variants, args.epochs, args.dataset,
                train_subset=args.train_subset, sets=[*sets, *args.set])
    train_and_report(grid, args.jobs, args.table_only, table_file)


def train_and_report(grid: Grid, jobs: int, table_only: bool, table_file: str) -> None:
    """Train ``grid`` with ``jobs`` runs at a time (unless ``table_only``), then write its table to
    ``table_file`` in its folder and print it."""
    if not table_only:
        grid.run(jobs)
    summary = table(grid)
    grid.out.mkdir(parents=True, exist_ok=True)
    (grid.out / table_file).write_text(summary + "\n")
    print(summary)
