"""One fair table of the online distillation methods on Fashion-MNIST: DML, SwitOKD, SOKD and BD-KD.

Every run has the small student (``--models``, ``cnn``) and one larger network of ``--teacher``'s
architecture (``wrn_16_1`` by default), trained with one recipe (``grid.py``: SGD + Nesterov, lr 0.05 for
every network, cosine to 0, batch 64, crop + flip), ``--epochs`` epochs, the final epoch evaluated:

* ``ce``: the student alone; ``ce`` of the teacher's architecture alone (``<out>/<teacher>/noise0/ce``),
  which is also SOKD's pretrained teacher (same seed, so on a ``--train-subset`` the same images);
* ``dml``: the student and a peer of the teacher's architecture (``method.peers=[<teacher>]``);
* ``switokd``, ``bd_kd``: the student and an online teacher of that architecture, from scratch, at the
  same lr as the student, so that every network of the table has the recipe of its CE row;
* ``switokd_lr10``: SwitOKD with the paper's ratio of learning rates, the teacher's 10x the student's
  (``roles.teacher.optim.lr``; the student keeps the recipe's);
* ``sokd``: the student and a branch on the frozen CE teacher above (``--teacher <its run>``);
* ``dlb``: the student alone, teacher-free, as the reference that needs no second network.

Columns: mean ± std over seeds of test top-1, NLL and ECE of the student and of the other network
(peer, online teacher or branch), the paired difference (same seed) of each to the CE run of its
architecture, and training time relative to the student's CE (runs go two single-thread processes side
by side: indicative only; ``online_cost.py`` times properly; SOKD's excludes training its teacher). Then
per epoch SwitOKD's share of expert-mode steps and BD-KD's mean forward-KL weight (from ``log.csv``), and
BD-KD's claim, which is about calibration: the ECE of the student and of the teacher under CE, DML and
BD-KD, paired differences, and their reliability diagrams (bins pooled over seeds) in ``--figure``.

Default scale (a class-balanced 10,000-image subset, 8 epochs, 3 seeds, 24 runs): about 30 minutes on
2 cores.

    python benchmarks/online_table.py --figure benchmarks/figures/online_reliability.png
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grid import Grid, Variant, fmt, grid_parser
from matplotlib.figure import Figure

from selfdistill.analysis.plots import draw_reliability, save_png
from selfdistill.analysis.runs import eval_metric
from selfdistill.config import parse_assignment
from selfdistill.engine import resolve

ONLINE = ("dml", "switokd", "switokd_lr10", "bd_kd", "sokd")
METHODS = ("ce", *ONLINE, "dlb")  # the table's order; runs start longest first


def variants(teacher: str, teachers: Grid, lr: float) -> list[Variant]:
    def pretrained(seed: int) -> tuple[str, ...]:
        return (f"teachers=[{teachers.folder(teacher, 0.0, 'ce', seed)}]",)

    online = f"method.teacher_model={teacher}"
    return [Variant("dml", "dml", sets=(f"method.peers=[{teacher}]",)),
            Variant("switokd", "switokd", sets=(online,)),
            Variant("switokd_lr10", "switokd", sets=(online, f"roles.teacher.optim.lr={lr:g}")),
            Variant("bd_kd", "bd_kd", sets=(online,)),
            Variant("sokd", "sokd", sets_for=pretrained),
            Variant("dlb", "dlb"), Variant("ce", "ce")]


def student(run: dict) -> dict:
    """Top-1, NLL, ECE and reliability bins of the run's student."""
    return {"top1": eval_metric(run, "top1"), "nll": eval_metric(run, "nll"), "ece": eval_metric(run, "ece"),
            "reliability": run["reliability"], "role": "student"}


def other(run: dict) -> dict:
    """The same of the run's one network besides the student (``metrics.json``'s ``networks``)."""
    (role, figures), = run["networks"].items()
    return {**figures, "role": role}


def columns(runs: dict[int, dict], of, base: dict[int, dict] | None) -> str:
    """Top-1 of network ``of`` (and its paired difference to ``base``, CE runs of that network's architecture
    alone), NLL and ECE: four table cells."""
    got = {seed: of(run) for seed, run in runs.items()}
    paired = [got[s]["top1"] - student(base[s])["top1"] for s in got if base and s in base]
    return (f"{fmt([g['top1'] for g in got.values()], 2)} | {fmt(paired, 2) if paired else '—'} | "
            f"{fmt([g['nll'] for g in got.values()], 3)} | {fmt([g['ece'] for g in got.values()], 2)}")


def main_table(students: Grid, teachers: Grid, model: str, teacher: str) -> str:
    head = ("| method | other network | seeds | student top-1 % | Δ vs CE | student NLL | student ECE % | "
            f"other top-1 % | Δ vs {teacher} CE | other NLL | other ECE % | train time vs CE |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base, alone = students.runs(model, 0.0, "ce"), teachers.runs(teacher, 0.0, "ce")
    rows = [("ce", "—", base, columns(base, student, None), "— | — | — | —"),
            ("ce", f"{teacher} alone", alone, "— | — | — | —", columns(alone, student, None))]
    chosen = {v.name for v in students.variants}
    for name in METHODS[1:]:
        runs = students.runs(model, 0.0, name) if name in chosen else {}
        if runs:
            online = name in ONLINE
            role = f"{other(next(iter(runs.values())))['role']} ({teacher})" if online else "—"
            rows.append((name, role, runs, columns(runs, student, base),
                         columns(runs, other, alone) if online else "— | — | — | —"))
    base_time = statistics.fmean(r["train_s"] for r in base.values()) if base else None
    for name, role, runs, left, right in rows:
        if runs:
            time = f"{statistics.fmean(r['train_s'] for r in runs.values()) / base_time:.2f}" if base_time else "—"
            lines.append(f"| {name} | {role} | {len(runs)} | {left} | {right} | {time} |")
    return "\n".join(lines)


def per_epoch(students: Grid, model: str, variant: str, stat: str, what: str) -> str:
    """One line: a per-step statistic of the method, its epoch means averaged over seeds."""
    logs = [run["log"] for run in students.runs(model, 0.0, variant).values()]
    if not logs:
        return ""
    means = [statistics.fmean(log[e][stat] for log in logs) for e in range(min(map(len, logs)))]
    return f"{what} per epoch (mean over {len(logs)} seeds): " + ", ".join(f"{m:.2f}" for m in means)


def pooled(bins: list[dict]) -> dict:
    """Reliability bins summed over runs."""
    return {"bins": bins[0]["bins"]} | {key: [sum(b[key][i] for b in bins) for i in range(bins[0]["bins"])]
                                         for key in ("count", "confidence_sum", "correct")}


def calibration(students: Grid, teachers: Grid, model: str, teacher: str, figure: Path) -> str:
    """ECE of the student and of the teacher under CE, DML and BD-KD with paired differences; the
    reliability diagrams of the six (bins pooled over seeds) go to ``figure``."""
    ce, dml, bd = (students.runs(model, 0.0, name) for name in ("ce", "dml", "bd_kd"))
    sides = [(f"student ({model})", [(ce, student), (dml, student), (bd, student)]),
             (f"teacher/peer ({teacher})", [(teachers.runs(teacher, 0.0, "ce"), student), (dml, other), (bd, other)])]
    head = "| network | CE ECE % | DML ECE % | BD-KD ECE % | BD-KD − DML | BD-KD − CE | DML − CE |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    diagrams = []
    for label, groups in sides:
        if not all(runs for runs, _ in groups):
            continue
        ece = [{seed: of(run)["ece"] for seed, run in runs.items()} for runs, of in groups]

        def diff(a: dict, b: dict) -> str:
            return fmt([a[s] - b[s] for s in a if s in b], 2)

        lines.append(f"| {label} | {' | '.join(fmt(list(e.values()), 2) for e in ece)} | "
                     f"{diff(ece[2], ece[1])} | {diff(ece[2], ece[0])} | {diff(ece[1], ece[0])} |")
        for method, (runs, of) in zip(("CE", "DML", "BD-KD"), groups):
            diagrams.append((f"{label}, {method} ({len(runs)} seeds)", pooled([of(r)["reliability"]
                                                                             for r in runs.values()])))
    if diagrams:  # one row per network: CE, DML, BD-KD
        fig = Figure(figsize=(10.2, 3.6 * len(diagrams) // 3), dpi=110, layout="constrained")
        for k, (ax, (title, bins)) in enumerate(zip(fig.subplots(len(diagrams) // 3, 3, squeeze=False).ravel(),
                                                     diagrams)):
            draw_reliability(ax, bins, title, legend=k == 0)
        figure.parent.mkdir(parents=True, exist_ok=True)
        save_png(fig, figure)
    return "\n".join(lines)


def main() -> None:
    parser = grid_parser(__doc__, noise=(0.0,))
    parser.set_defaults(epochs=8, train_subset=10000, out="bench-out/online-table")
    parser.add_argument("--teacher", default="wrn_16_1", help="architecture of the peer / online teacher / branch")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"a subset of {', '.join(METHODS)} (CE of both architectures always runs)")
    parser.add_argument("--figure", default=None, help="reliability diagrams (default: <out>/online_reliability.png)")
    args = parser.parse_args()
    if args.noise != [0.0] or len(args.models) != 1:
        parser.error("this table is on clean labels (--noise 0) with one student (--models)")
    model, out = args.models[0], Path(args.out)
    common = dict(dataset=args.dataset, train_subset=args.train_subset or None,
                  sets=[f"train.eval_every={args.epochs}", *args.set])
    teachers = Grid(out, [args.teacher], [0.0], args.seeds, [Variant("ce", "ce")], args.epochs, **common)
    lr = 10 * resolve([parse_assignment(item) for item in args.set]).optim.lr  # SwitOKD's teacher: 10x the student's
    chosen = [v for v in variants(args.teacher, teachers, lr) if v.name in {"ce", *args.methods}]
    students = Grid(out, [model], [0.0], args.seeds, chosen, args.epochs, **common)
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:  # first in, first out: the teachers start before SOKD's runs
            alone = {s: pool.submit(teachers.run_one, args.teacher, 0.0, teachers.variants[0], s) for s in args.seeds}

            def student(variant: Variant, seed: int) -> None:
                if variant.name == "sokd":
                    alone[seed].result()
                students.run_one(model, 0.0, variant, seed)

            for future in [pool.submit(student, v, s) for v in chosen for s in args.seeds]:
                future.result()
    figure = Path(args.figure) if args.figure else out / "online_reliability.png"
    summary = "\n\n".join(part for part in [
        f"Student {model}, other network {args.teacher}, {args.epochs} epochs, {args.train_subset or 'all'} "
        f"training images:", main_table(students, teachers, model, args.teacher),
        *(per_epoch(students, model, name, "switokd_expert", f"{name}: share of expert-mode steps")
          for name in ("switokd", "switokd_lr10")),
        per_epoch(students, model, "bd_kd", "bd_kd_forward_weight", "bd_kd: mean forward-KL weight"),
        "Calibration (BD-KD's claim), ECE % and paired differences (points):",
        calibration(students, teachers, model, args.teacher, figure)] if part)
    out.mkdir(parents=True, exist_ok=True)
    (out / "online_table.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
