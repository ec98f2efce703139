"""One fair table of the teacher->student methods on Fashion-MNIST: one teacher recipe, one student recipe.

Stage 1 trains the teachers once (cached in ``<out>/<teacher>/noise0/``): the teacher architecture
with CE (``teacher_ce``) and with label smoothing (``teacher_ls``, ``--method ls`` at its default
eps), ``--teacher-epochs`` each. Stage 2 distils them into the student (``--models``, the small
``cnn`` by default) with every method of the issue at its paper's/official defaults (each
``methods/*.py`` docstring lists them), beside the CE student and DLB (no teacher), for every seed:

* kd, dkd, dist, nkd, sp, crd, mix_kd: the CE teacher of the same seed, so on a ``--train-subset`` the
  teacher was trained on the student's own images (the subset follows the seed);
* ca_mkd: ``--ca-mkd-teachers`` CE teachers, the one of the same seed and those of the next seeds in
  turn (those saw other subsets of the training set; on the full set they differ only by init, order and
  augmentation);
* kd_ls_teacher: KD from the label-smoothed teacher of the same seed (Müller et al., 2019: smoothing
  the teacher erases the non-target "dark knowledge", so its students gain less). The teachers' mean
  non-target entropy on the test set (``teacher_test_nontarget_entropy``) shows how much was erased.

One recipe for every run (``grid.py``: SGD + Nesterov, lr 0.05, cosine to 0, batch 64, Fashion-MNIST's
crop + flip); the final epoch is evaluated, nothing is tuned on the test set. Only DKD's warm-up is
scaled to the run: its 20 epochs are of mdistiller's 240, so here ``max(1, round(epochs / 12))``.
Columns: mean ± std over seeds of test top-1, NLL, ECE, the paired difference to the CE student,
student-teacher top-1 agreement and predictive KL(teacher || student) (``test_agreement``,
``test_teacher_kl``), the teacher's own top-1 and non-target entropy, and training time relative to
CE (two single-thread runs side by side: indicative only; ``teacher_cost.py`` times properly).

Default scale (5,000 training images, teachers 8 epochs, students 5 epochs, 3 seeds, resnet20 teacher):
about 20 minutes on 2 cores. Full scale (all 60,000 images; hours on 2 cores):

    python benchmarks/kd_table.py --train-subset 0 --teacher-epochs 30 --epochs 30 --seeds 0 1 2 --out bench-out/kd-full
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grid import Grid, Variant, fmt, grid_parser

from selfdistill.analysis.runs import eval_metric, eval_split
from selfdistill.methods import method_names

FROM_TEACHER = ("kd", "dkd", "dist", "nkd", "sp", "crd", "mix_kd")
METHODS = ("ce", "dlb", *FROM_TEACHER, "ca_mkd", "kd_ls_teacher")


def teacher_seeds(seeds: list[int], count: int) -> list[int]:
    """The seeds of the CE teachers: the students' seeds, extended until CA-MKD has enough."""
    found = list(seeds)
    while len(found) < count:
        found.append(max(found) + 1)
    return found


def student_variants(methods: list[str], epochs: int, ce_teachers: Grid, ls_teachers: Grid, teacher: str,
                     seeds: list[int], count: int) -> list[Variant]:
    pool = teacher_seeds(seeds, count)

    def one(kind: Grid, name: str):
        return lambda seed: (f"teachers=[{kind.folder(teacher, 0.0, name, seed)}]",)

    def several(seed: int) -> tuple[str, ...]:
        start = pool.index(seed)
        chosen = [pool[(start + k) % len(pool)] for k in range(count)]
        return (f"teachers=[{', '.join(str(ce_teachers.folder(teacher, 0.0, 'teacher_ce', s)) for s in chosen)}]",)

    made = {"ce": Variant("ce", "ce"), "dlb": Variant("dlb", "dlb"),
            "ca_mkd": Variant("ca_mkd", "ca_mkd", sets_for=several),
            "kd_ls_teacher": Variant("kd_ls_teacher", "kd", sets_for=one(ls_teachers, "teacher_ls"))}
    for name in FROM_TEACHER:
        extra = (f"method.warmup_epochs={max(1, round(epochs / 12))}",) if name == "dkd" else ()
        made[name] = Variant(name, name, sets=extra, sets_for=one(ce_teachers, "teacher_ce"))
    return [made[m] for m in METHODS if m in methods]


def _mean(runs: list[dict], key: str, digits: int) -> str:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return fmt(values, digits) if values else "—"


def student_table(grid: Grid, model: str) -> str:
    head = ("| method | teacher | seeds | top-1 % | Δ top-1 vs CE | NLL | ECE % | agreement % | pred. KL | "
            "teacher top-1 % | teacher non-target H | train time vs CE |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = grid.runs(model, 0.0, "ce")
    base_time = statistics.fmean(r["train_s"] for r in base.values()) if base else None
    for variant in grid.variants:
        runs = grid.runs(model, 0.0, variant.name)
        if not runs:
            continue
        r = list(runs.values())
        s = eval_split(r[0])
        paired = [eval_metric(runs[k], "top1") - eval_metric(base[k], "top1") for k in runs if k in base]
        teacher = "—" if variant.method in ("ce", "dlb") else (
            f"{len(r[0]['teachers'])} x {r[0]['teachers'][0]['model']}"
            + (" (LS)" if variant.name == "kd_ls_teacher" else ""))
        time = f"{statistics.fmean(x['train_s'] for x in r) / base_time:.2f}" if base_time else "—"
        lines.append(
            f"| {variant.name} | {teacher} | {len(r)} | {fmt([eval_metric(x, 'top1') for x in r], 2)} | "
            f"{fmt(paired, 2) if variant.name != 'ce' and paired else '—'} | "
            f"{fmt([eval_metric(x, 'nll') for x in r], 3)} | {fmt([eval_metric(x, 'ece') for x in r], 2)} | "
            f"{_mean(r, f'{s}_agreement', 2)} | {_mean(r, f'{s}_teacher_kl', 3)} | "
            f"{_mean(r, f'teacher_{s}_top1', 2)} | {_mean(r, f'teacher_{s}_nontarget_entropy', 3)} | "
            f"{time} |")
    return "\n".join(lines)


def teacher_table(teachers: list[tuple[Grid, str]], model: str) -> str:
    head = "| teacher | method | seeds | top-1 % | NLL | ECE % | train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for grid, name in teachers:
        r = list(grid.runs(model, 0.0, name).values())
        if r:
            lines.append(f"| {model} | {name} | {len(r)} | {fmt([eval_metric(x, 'top1') for x in r], 2)} | "
                         f"{fmt([eval_metric(x, 'nll') for x in r], 3)} | {fmt([eval_metric(x, 'ece') for x in r], 2)} "
                         f"| {statistics.fmean(x['train_s'] for x in r):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = grid_parser(__doc__, noise=(0.0,))
    parser.set_defaults(epochs=5, train_subset=5000, out="bench-out/kd-table")
    parser.add_argument("--teacher", default="resnet20", help="the teachers' architecture")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--ca-mkd-teachers", type=int, default=2, help="teachers per CA-MKD student (>= 2)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"a subset of {', '.join(METHODS)}")
    args = parser.parse_args()
    if args.noise != [0.0]:
        parser.error("--noise: this table is on clean labels only (0)")
    if args.ca_mkd_teachers < 2:
        parser.error("--ca-mkd-teachers: CA-MKD needs at least 2 teachers")
    wanted = {"ls", *{"kd" if m == "kd_ls_teacher" else m for m in args.methods}}
    missing = sorted(wanted - set(method_names()))
    if missing:
        raise SystemExit(f"kd_table.py: method(s) {', '.join(missing)} not in this selfdistill; drop them with "
                         f"--methods or update")
    subset, out = args.train_subset or None, Path(args.out)
    common = dict(dataset=args.dataset, train_subset=subset)
    ce_seeds = teacher_seeds(args.seeds, args.ca_mkd_teachers if "ca_mkd" in args.methods else 1)
    ce_teachers = Grid(out, [args.teacher], [0.0], ce_seeds, [Variant("teacher_ce", "ce")], args.teacher_epochs,
                       sets=[f"train.eval_every={args.teacher_epochs}", *args.set], **common)
    ls_teachers = Grid(out, [args.teacher], [0.0], args.seeds, [Variant("teacher_ls", "ls")], args.teacher_epochs,
                       sets=[f"train.eval_every={args.teacher_epochs}", *args.set], **common)
    variants = student_variants(args.methods, args.epochs, ce_teachers, ls_teachers, args.teacher, args.seeds,
                                args.ca_mkd_teachers)
    students = Grid(out, args.models, [0.0], args.seeds, variants, args.epochs,
                    sets=[f"train.eval_every={args.epochs}", *args.set], **common)
    if not args.table_only:
        jobs = [(ce_teachers, s, ce_teachers.variants[0]) for s in ce_seeds]
        if "kd_ls_teacher" in args.methods:
            jobs += [(ls_teachers, s, ls_teachers.variants[0]) for s in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(g.run_one, args.teacher, 0.0, v, s) for g, s, v in jobs]:
                future.result()
        students.run(args.jobs)
    parts = [f"Teachers ({args.teacher}, {args.teacher_epochs} epochs):\n\n"
             + teacher_table([(ce_teachers, "teacher_ce"), (ls_teachers, "teacher_ls")], args.teacher)]
    parts += [f"Students ({model}, {args.epochs} epochs, {subset or 'all'} training images):\n\n"
              + student_table(students, model) for model in args.models]
    summary = "\n\n".join(parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_table.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
