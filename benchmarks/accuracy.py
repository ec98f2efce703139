"""CE vs DLB accuracy on one recipe: equal epochs and equal images seen, several seeds.

For every model, label-noise rate and seed it trains three variants:

* ``ce``     cross-entropy for E epochs;
* ``dlb``    DLB for E epochs (equal epochs; it forwards about twice the images);
* ``ce_2x``  cross-entropy for 2E epochs (equal images seen).

The table gives mean ± std over seeds of final-epoch test top-1, NLL and ECE, and the paired
difference to CE per seed. Runs are resumable (see ``grid.py``).

    python benchmarks/accuracy.py --models cnn resnet8 --noise 0 0.4 --seeds 0 1 2 --epochs 10 --jobs 2
    python benchmarks/accuracy.py --models resnet20 --train-subset 5000 --epochs 60 --out bench-out/regime
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import Grid, Variant, table

VARIANTS = [Variant("ce", "ce"), Variant("dlb", "dlb"), Variant("ce_2x", "ce", epochs_factor=2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-out/accuracy")
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    args = parser.parse_args()
    grid = Grid(Path(args.out), args.models, args.noise, args.seeds, VARIANTS, args.epochs, args.dataset,
                train_subset=args.train_subset, sets=args.set)
    if not args.table_only:
        grid.run(args.jobs)
    summary = table(grid)
    (grid.out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
