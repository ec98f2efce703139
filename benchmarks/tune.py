"""Tune one option of one method on a held-out validation split (never on the test set).

Holds out a class-balanced part of the training set (``data.validation_split``), trains the method
once per value (and CE once, for reference), and prints final-epoch validation top-1 / NLL / ECE.

    python benchmarks/tune.py --method ls --option epsilon --values 0.05 0.1 0.2 0.3 --noise 0 0.4
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import Grid, Variant, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--option", required=True, help="an option of the method, e.g. epsilon")
    parser.add_argument("--values", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=["cnn"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--validation", type=int, default=10000, help="training images held out for validation")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-out/tune")
    args = parser.parse_args()
    variants = [Variant("ce", "ce")] + [
        Variant(f"{args.method}_{args.option}={v}", args.method, sets=(f"method.{args.option}={v}",))
        for v in args.values]
    grid = Grid(Path(args.out), args.models, args.noise, args.seeds, variants, args.epochs,
                sets=[f"data.validation_split={args.validation}"])
    grid.run(args.jobs)
    summary = table(grid)
    (grid.out / f"tune_{args.method}_{args.option}.md").write_text(summary + "\n")
    print(summary.replace("top-1 %", "val top-1 %"))


if __name__ == "__main__":
    main()
