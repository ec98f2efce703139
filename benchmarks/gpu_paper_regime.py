"""DLB against CE in the paper's regime, item 3 of ``shared/gpu-checklist.md``: ResNet-18 on the full
Fashion-MNIST zero-padded to 32×32, the recipe ``configs/fmnist_resnet18_gpu.yaml`` (SGD Nesterov
lr 0.05, batch 64, weight decay 5e-4, crop augmentation, step schedule ×0.1 at 1/2 and 3/4 of the
epochs), several seeds in parallel processes on one GPU, clean and optionally with symmetric label noise.

``--budget-s`` plans the grid from the single-process images/s that ``gpu_throughput.py`` measured at
the recipe's batch (``--throughput``): the most seeds (up to ``--seeds``) whose runs are estimated to
finish in the budget at ``--epochs``, and, when even one pair does not fit, fewer epochs (said in the
output, because the checklist asks for ≥ 60). The estimate assumes parallel processes slow each other
by ``--contention`` per extra pair; it is a guess, so the calling script also stops the grid at its
deadline. Runs go to ``<out>/resnet18/noise<P>/<variant>/seed<S>`` (see ``grid.py``); the table is
printed and written to ``<out>/summary.md``. Evaluation every ``--eval-every`` epochs (the last always).

    python benchmarks/gpu_paper_regime.py --epochs 60 --seeds 0 1 2 --jobs 6
    python benchmarks/gpu_paper_regime.py --budget-s 400 --throughput gpu_throughput.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from grid import Grid, Variant, train_and_report

RECIPE = ["optim.lr=0.05", "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=5.0e-4",
          "data.pad_to=32", "data.augment.crop_padding=4"]
TRAIN_IMAGES = 60000


def schedule(epochs: int) -> list[str]:
    """The recipe's step schedule (×0.1 at epochs 30 and 45 of 60), scaled to ``epochs``."""
    return ["schedule.name=multistep", f"schedule.milestones=[{epochs // 2},{epochs * 3 // 4}]", "schedule.gamma=0.1"]


def rates(path: Path, model: str, batch: int) -> dict[str, float]:
    """Single-process new training images/s of CE and DLB on ``model`` at ``batch`` in bf16 + channels_last."""
    found = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if (r.get("model"), r.get("batch_size"), r.get("variant")) == (model, batch, "bf16+cl") and "error" not in r:
            found[r["method"]] = r["train_images_per_s"] / r["rows_per_step"] * batch  # new images per second
    return found


def plan(args: argparse.Namespace) -> tuple[int, list[int]]:
    """(epochs, seeds) that are estimated to fit ``args.budget_s``."""
    speed = rates(Path(args.throughput), args.model, args.batch_size)
    if "dlb" not in speed or "ce" not in speed:
        raise SystemExit(f"no {args.model} bf16+cl batch-{args.batch_size} CE and DLB rates in {args.throughput}")
    slowest = min(speed.values())  # new images per second of the slower method, alone on the GPU
    epoch_s = TRAIN_IMAGES / slowest * args.overhead
    for n in range(len(args.seeds), 0, -1):
        if args.epochs * epoch_s * (1 + args.contention * (n - 1)) * len(args.noise) <= args.budget_s:
            return args.epochs, args.seeds[:n]
    return max(4, math.floor(args.budget_s / (epoch_s * len(args.noise)))), args.seeds[:1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--equal-images", action="store_true", help="also CE for 2× the epochs (DLB's images seen)")
    parser.add_argument("--budget-s", type=float, default=None, help="plan epochs and seeds to fit this many seconds")
    parser.add_argument("--throughput", default="gpu_throughput.jsonl")
    parser.add_argument("--overhead", type=float, default=1.15, help="train's time per epoch over bench's")
    parser.add_argument("--contention", type=float, default=0.5, help="slowdown per extra parallel pair")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: all of them)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="resnet18", help="(another, with --train-subset, to try it on a CPU)")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--out", default="bench-out/gpu-regime")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    epochs, seeds = (args.epochs, args.seeds) if args.budget_s is None else plan(args)
    if epochs < args.epochs:
        print(f"plan: only {epochs} epochs fit the budget of {args.budget_s:.0f} s (the checklist asks for >= "
              f"{args.epochs}); 1 seed", flush=True)
    variants = [Variant("ce", "ce"), Variant("dlb", "dlb", sets=("method.temperature=3.0", "method.alpha=1.0"))]
    if args.equal_images:
        variants.append(Variant("ce_2x", "ce", epochs_factor=2))
    sets = [*RECIPE, *schedule(epochs), f"train.eval_every={args.eval_every}"]
    grid = Grid(Path(args.out), [args.model], args.noise, seeds, variants, epochs, args.dataset,
                batch_size=args.batch_size, train_subset=args.train_subset, sets=sets)
    print(f"plan: {args.model}, {epochs} epochs, seeds {seeds}, noise {args.noise}, variants "
          f"{[v.name for v in variants]}", flush=True)
    train_and_report(grid, args.jobs or len(seeds) * len(args.noise) * len(variants), args.table_only, "summary.md")


if __name__ == "__main__":
    main()
