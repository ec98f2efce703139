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

from grid import Variant, grid_parser, run_and_report

VARIANTS = [Variant("ce", "ce"), Variant("dlb", "dlb"), Variant("ce_2x", "ce", epochs_factor=2)]


def main() -> None:
    args = grid_parser(__doc__).parse_args()
    run_and_report(args, VARIANTS, "summary.md")


if __name__ == "__main__":
    main()
