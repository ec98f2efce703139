"""Tune one option of one method on a held-out validation split (never on the test set).

Holds out a class-balanced part of the training set (``data.validation_split``), trains the method
once per value (and CE once, for reference), and prints final-epoch validation top-1 / NLL / ECE.

    python benchmarks/tune.py --method ls --option epsilon --values 0.05 0.1 0.2 0.3 --noise 0 0.4
"""

from __future__ import annotations

from grid import Variant, grid_parser, run_and_report


def main() -> None:
    parser = grid_parser(__doc__, noise=(0.0,))
    parser.add_argument("--method", required=True)
    parser.add_argument("--option", required=True, help="an option of the method, e.g. epsilon")
    parser.add_argument("--values", nargs="+", required=True)
    parser.add_argument("--validation", type=int, default=10000, help="training images held out for validation")
    parser.set_defaults(seeds=[0], out="bench-out/tune")
    args = parser.parse_args()
    variants = [Variant("ce", "ce")] + [
        Variant(f"{args.method}_{args.option}={v}", args.method, sets=(f"method.{args.option}={v}",))
        for v in args.values]
    held_out = (f"data.validation_split={args.validation}",)
    run_and_report(args, variants, f"tune_{args.method}_{args.option}.md", held_out)


if __name__ == "__main__":
    main()
