"""CE and DLB with and without mixup/CutMix, on one recipe (the DLB paper's augmentation claim).

Variants: ``ce``, ``dlb`` (shared with ``accuracy.py``), ``ce_cutmix``, ``dlb_cutmix``, ``ce_mixup``,
``dlb_mixup``. CutMix: Beta(1, 1), applied to a batch with probability 0.5 (the CutMix paper's CIFAR
setting); mixup: Beta(1, 1) on every batch. DLB's replayed rows are the same mixed images as one step
earlier, re-augmented (see ``methods/dlb.py``).

    python benchmarks/mixing.py --models cnn --epochs 10 --seeds 0 1 2 --noise 0 --jobs 2 --out bench-out/accuracy
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import Grid, Variant, table

VARIANTS = [
    Variant("ce", "ce"),
    Variant("dlb", "dlb"),
    Variant("ce_cutmix", "ce", sets=("data.mix.name=cutmix",)),
    Variant("dlb_cutmix", "dlb", sets=("data.mix.name=cutmix",)),
    Variant("ce_mixup", "ce", sets=("data.mix.name=mixup",)),
    Variant("dlb_mixup", "dlb", sets=("data.mix.name=mixup",)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-out/accuracy")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    grid = Grid(Path(args.out), args.models, args.noise, args.seeds, VARIANTS, args.epochs)
    if not args.table_only:
        grid.run(args.jobs)
    summary = table(grid)
    (grid.out / "mixing_table.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
