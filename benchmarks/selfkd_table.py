"""One fair table of the teacher-free methods: same model, recipe and epochs for every method.

Trains CE and every teacher-free method on full Fashion-MNIST, clean and with 40% symmetric label
noise, several seeds, and writes one table: mean ± std of final-epoch test top-1, NLL and ECE, the
paired difference to CE, images/s and training time relative to CE, extra trainable (training-only)
parameters and peak memory (resident set size of the run's process on a CPU). Methods that forward
more images per step than CE get equal-images CE controls (``ce_2x``: DLB, CS-KD; ``ce_4x``: BAKE
with M = 3). Tf-KD_self's teacher is the CE run of the same seed and noise (a two-stage pipeline).

Every method runs with its paper's/official defaults (see each ``methods/*.py`` docstring); nothing
is tuned on the test set. Runs share the folder layout of ``accuracy.py``, so the CE, DLB and ce_2x
runs of the same recipe are reused. CPU timing here comes from two single-thread runs side by side
and is indicative only (``dlb_cost.py`` and ``engine_overhead.py`` time properly).

    python benchmarks/selfkd_table.py --models cnn --epochs 10 --seeds 0 1 2 --jobs 2 --out bench-out/accuracy
"""

from __future__ import annotations

from grid import Variant, grid_parser, run_and_report

VARIANTS = [
    Variant("ce", "ce"),
    Variant("ce_2x", "ce", epochs_factor=2),
    Variant("ce_4x", "ce", epochs_factor=4),
    Variant("ls", "ls"),
    Variant("dlb", "dlb"),
    Variant("drg", "drg"),
    Variant("dsr", "dsr"),
    Variant("lightskd", "lightskd"),
    Variant("tf_nkd", "tf_nkd"),
    Variant("zipf_ls", "zipf_ls"),
    Variant("bake", "bake"),
    Variant("cs_kd", "cs_kd"),
    Variant("ps_kd", "ps_kd"),
    Variant("tf_kd_reg", "tf_kd_reg"),
    Variant("byot", "byot"),
    Variant("tf_kd_self", "tf_kd_self", sets=("teachers=[{run:ce}]",), stage=1),
]


def main() -> None:
    parser = grid_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=[v.name for v in VARIANTS], help="a subset of the variants")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if v.name in args.methods]
    if any(v.name == "tf_kd_self" for v in variants) and not any(v.name == "ce" for v in variants):
        variants.insert(0, VARIANTS[0])  # the teacher
    run_and_report(args, variants, "selfkd_table.md")


if __name__ == "__main__":
    main()
