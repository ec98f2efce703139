"""CE and DLB with and without mixup/CutMix, on one recipe (the DLB paper's augmentation claim).

Variants: ``ce``, ``dlb`` (shared with ``accuracy.py``), ``ce_cutmix``, ``dlb_cutmix``, ``ce_mixup``,
``dlb_mixup``. CutMix: Beta(1, 1), applied to a batch with probability 0.5 (the CutMix paper's CIFAR
setting); mixup: Beta(1, 1) on every batch. DLB's replayed rows are the same mixed images as one step
earlier, re-augmented (see ``methods/dlb.py``).

    python benchmarks/mixing.py --models cnn --epochs 10 --seeds 0 1 2 --noise 0 --jobs 2 --out bench-out/accuracy
"""

from __future__ import annotations

from grid import Variant, grid_parser, run_and_report

VARIANTS = [
    Variant("ce", "ce"),
    Variant("dlb", "dlb"),
    Variant("ce_cutmix", "ce", sets=("data.mix.name=cutmix",)),
    Variant("dlb_cutmix", "dlb", sets=("data.mix.name=cutmix",)),
    Variant("ce_mixup", "ce", sets=("data.mix.name=mixup",)),
    Variant("dlb_mixup", "dlb", sets=("data.mix.name=mixup",)),
]


def main() -> None:
    args = grid_parser(__doc__, noise=(0.0,)).parse_args()
    run_and_report(args, VARIANTS, "mixing_table.md")


if __name__ == "__main__":
    main()
