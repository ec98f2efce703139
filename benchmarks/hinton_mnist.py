"""Hinton et al. (2015)'s MNIST setting, run on Fashion-MNIST: the bundled recipe pair ``hinton_mnist_teacher``
/ ``hinton_mnist_student`` with ``--dataset fashion-mnist`` (and ``--epochs``), for each seed:

* ``teacher``: 784-1200-1200-10, dropout 0.5 (hidden) and 0.2 (input), inputs jittered by up to 2 pixels;
* ``student alone``: 784-800-800-10 with cross-entropy only, no regularisation (``--method ce``, no teacher);
* ``student distilled``: the same student, KD at T=20 (0.1 CE + 0.9 T²·KL) from the teacher of its seed.

Each run is a ``selfdistill train`` process with one thread, two at a time (teachers and lone students first,
then the distilled students); finished runs are skipped and interrupted ones resumed. The table gives mean ±
std over seeds of the final epoch's test top-1, test errors (of 10,000), NLL and ECE, and the students' top-1
agreement with the teacher; nothing is tuned on the test set.

    python benchmarks/hinton_mnist.py --epochs 20 --seeds 0 1 2 --out bench-out/hinton
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grid import fmt

from selfdistill.analysis.runs import eval_metric, load_run

VARIANTS = {  # name -> (recipe, extra arguments; {teacher} is the teacher run of the same seed), stage
    "teacher": ("hinton_mnist_teacher", (), 0),
    "student alone": ("hinton_mnist_student", ("--method", "ce", "--set", "teachers=[]"), 0),
    "student distilled": ("hinton_mnist_student", ("--teacher", "{teacher}"), 1),
}


def folder(out: Path, variant: str, seed: int) -> Path:
    return out / variant.replace(" ", "_") / f"seed{seed}"


def command(args: argparse.Namespace, variant: str, seed: int) -> list[str]:
    run = folder(args.out, variant, seed)
    cmd = [sys.executable, "-m", "selfdistill", "train", "--out", str(run), "--set", "train.threads=1",
           "--set", "train.progress=false"]
    if (run / "config.yaml").is_file():
        return [*cmd, "--resume"]
    recipe, extra, _ = VARIANTS[variant]
    teacher = str(folder(args.out, "teacher", seed))
    return [*cmd, "--config", recipe, "--dataset", args.dataset, "--epochs", str(args.epochs), "--seed", str(seed),
            *(item.replace("{teacher}", teacher) for item in extra)]


def run_one(args: argparse.Namespace, variant: str, seed: int) -> None:
    run = folder(args.out, variant, seed)
    if (run / "metrics.json").is_file():
        return
    run.parent.mkdir(parents=True, exist_ok=True)
    with (run.parent / f"seed{seed}.log").open("a") as log:
        result = subprocess.run(command(args, variant, seed), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ})
    if result.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed} failed ({result.returncode}); see {run.parent}/seed{seed}.log")
    print(f"done {run}", flush=True)


def table(args: argparse.Namespace) -> str:
    head = ("| network | parameters | epochs | seeds | test top-1 % | test errors | NLL | ECE % | "
            "agreement with teacher % |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant in VARIANTS:
        runs = [load_run(folder(args.out, variant, s)) for s in args.seeds
                if (folder(args.out, variant, s) / "metrics.json").is_file()]
        if not runs:
            continue
        top1 = [eval_metric(r, "top1") for r in runs]
        errors = [round((100 - t) / 100 * r["test_images"]) for t, r in zip(top1, runs)]
        agreement = [r["test_agreement"] for r in runs if r.get("test_agreement") is not None]
        lines.append(f"| {variant} | {runs[0]['parameters']:,} | {runs[0]['epochs']} | {len(runs)} | {fmt(top1, 2)} | "
                     f"{fmt(errors, 0)} | {fmt([eval_metric(r, 'nll') for r in runs], 3)} | "
                     f"{fmt([eval_metric(r, 'ece') for r in runs], 2)} | {fmt(agreement, 2) if agreement else '—'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/hinton"))
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    args = parser.parse_args()
    if not args.table_only:
        for stage in sorted({stage for *_, stage in VARIANTS.values()}):
            jobs = [(v, s) for s in args.seeds for v, (*_, st) in VARIANTS.items() if st == stage]
            with ThreadPoolExecutor(args.jobs) as pool:
                for future in [pool.submit(run_one, args, v, s) for v, s in jobs]:
                    future.result()
    summary = table(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
