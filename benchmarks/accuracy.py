"""CE vs DLB accuracy: a grid of ``selfdistill train`` runs, then one mean ± std table.

For every model, label-noise rate and seed it trains three variants with one recipe:

* ``ce``     cross-entropy for E epochs;
* ``dlb``    DLB for E epochs (equal epochs; it forwards about twice the images);
* ``ce_2x``  cross-entropy for 2E epochs (equal images seen).

Runs go to ``--out/<model>/noise<P>/<variant>/seed<S>``; finished runs are skipped and interrupted
ones resumed, so the script can be stopped and restarted. ``--jobs`` runs go in parallel, each with
``train.threads=1``. The table gives mean ± std over seeds of final-epoch test top-1, NLL and ECE,
and the paired difference DLB - CE per seed.

    python benchmarks/accuracy.py --models cnn resnet8 --noise 0 0.4 --seeds 0 1 2 --epochs 10 --jobs 2
    python benchmarks/accuracy.py --models resnet20 --train-subset 5000 --epochs 60 \
        --set schedule.name=multistep --set "schedule.milestones=[30,45]" --out bench-out/regime
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from selfdistill.report import load_run

VARIANTS = {"ce": ("ce", 1), "dlb": ("dlb", 1), "ce_2x": ("ce", 2)}


def run_one(out: Path, model: str, noise: float, variant: str, seed: int, args: argparse.Namespace) -> Path:
    method, factor = VARIANTS[variant]
    folder = out / model / f"noise{noise:g}" / variant / f"seed{seed}"
    if (folder / "metrics.json").is_file():
        return folder
    cmd = [sys.executable, "-m", "selfdistill", "train", "--out", str(folder)]
    if (folder / "config.yaml").is_file():
        cmd.append("--resume")
    else:
        cmd += ["--method", method, "--dataset", args.dataset, "--model", model, "--epochs",
                str(args.epochs * factor), "--seed", str(seed), "--label-noise", str(noise),
                "--batch-size", str(args.batch_size), "--set", "schedule.name=cosine"]
        if args.train_subset:
            cmd += ["--train-subset", str(args.train_subset)]
        for item in args.set:
            cmd += ["--set", item]
    cmd += ["--set", "train.threads=1", "--set", "train.progress=false"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"seed{seed}.log").open("a") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    if result.returncode != 0:
        raise RuntimeError(f"run failed ({result.returncode}): {' '.join(cmd)}; see {folder.parent}/seed{seed}.log")
    print(f"done {folder}", flush=True)
    return folder


def fmt(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(out: Path, args: argparse.Namespace) -> str:
    lines = ["| model | noise | variant | epochs | images seen (M) | seeds | top-1 % | NLL | ECE % | Δ top-1 vs ce |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, noise in itertools.product(args.models, args.noise):
        runs = {}
        for variant in args.variants:
            folders = [out / model / f"noise{noise:g}" / variant / f"seed{s}" for s in args.seeds]
            runs[variant] = {s: load_run(f) for s, f in zip(args.seeds, folders) if (f / "metrics.json").is_file()}
        for variant, by_seed in runs.items():
            if not by_seed:
                continue
            r = list(by_seed.values())
            paired = [by_seed[s]["test_top1"] - runs["ce"][s]["test_top1"] for s in by_seed if s in runs.get("ce", {})]
            delta = fmt(paired, 2) if variant != "ce" and paired else "—"
            lines.append(f"| {model} | {noise:g} | {variant} | {r[0]['epochs']} | "
                         f"{statistics.fmean(x['train_images_seen'] for x in r) / 1e6:.2f} | {len(r)} | "
                         f"{fmt([x['test_top1'] for x in r], 2)} | {fmt([x['test_nll'] for x in r], 3)} | "
                         f"{fmt([x['test_ece'] for x in r], 2)} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-out/accuracy")
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.table_only:
        grid = list(itertools.product(args.seeds, args.noise, args.models, args.variants))
        # longest runs first, so the pool stays busy to the end
        grid.sort(key=lambda g: -VARIANTS[g[3]][1] - (g[3] == "dlb"))
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_one, out, m, n, v, s, args) for s, n, m, v in grid]
            for future in futures:
                future.result()
    summary = table(out, args)
    (out / "summary.md").parent.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
