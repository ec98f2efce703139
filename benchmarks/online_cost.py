"""Online distillation's cost: a DML step of two networks against a CE step of each, and SwitOKD's
expert-mode steps against its learning-mode steps.

What is timed, all in one process on the same data (in-memory uint8, the engine's batched augmentation),
batch size and optimiser, training loop only (``Trainer.train_epoch``: no evaluation, no checkpointing),
one warm-up round, then ``--repeats`` rounds in which every side runs one epoch in turn; medians:

* ``ce A``, ``ce B``: one CE epoch of the student architecture, and one of the peer's;
* ``dml``: one epoch of ``--method dml`` training both (one forward of each, one backward of the sum, two
  optimiser steps). Its only work beyond the two CE steps is the two KL terms, so the target is
  ``(ce A + ce B) / dml >= 0.95``;
* ``switokd expert``, ``switokd learning``: one epoch of ``--method switokd`` (student A, online teacher B)
  with the switch forced to one mode for the whole epoch (``switokd.expert_mode`` replaced for the
  epoch). In expert mode the teacher only runs forward: its terms are detached, so the backward never
  reaches it, and it does not step. Expert steps must be the cheaper.

    python benchmarks/online_cost.py --images 12000 --repeats 5                     # cnn + cnn
    python benchmarks/online_cost.py --peer resnet20 --images 6000 --repeats 5      # cnn + resnet20
"""

from __future__ import annotations

import statistics

import torch
from timing import parse_timing_args, say_round, timing_data, timing_parser, timing_trainer

import selfdistill.methods.switokd as switokd
from selfdistill.engine import Trainer


def forced_epoch(trainer: Trainer, epoch: int, expert: bool):
    """One SwitOKD epoch with every step's switch set to ``expert``."""
    decide = switokd.expert_mode
    switokd.expert_mode = lambda *distances: expert
    try:
        result = trainer.train_epoch(epoch)
    finally:
        switokd.expert_mode = decide
    assert result.terms["switokd_expert"] == float(expert), "the forced mode did not reach the method"
    return result


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--student", default="cnn", help="network A: the student")
    parser.add_argument("--peer", default="cnn", help="network B: DML's peer and SwitOKD's online teacher")
    args = parse_timing_args(parser)
    data = timing_data(args)
    ce_a = timing_trainer(args, data, method={"name": "ce"}, model={"name": args.student})
    ce_b = timing_trainer(args, data, method={"name": "ce"}, model={"name": args.peer})
    student = {"name": args.student}
    dml = timing_trainer(args, data, method={"name": "dml", "peers": [args.peer]}, model=student)
    swit = timing_trainer(args, data, method={"name": "switokd", "teacher_model": args.peer}, model=student)
    sides = {"ce A": ce_a.train_epoch, "ce B": ce_b.train_epoch, "dml": dml.train_epoch,
             "switokd expert": lambda rep: forced_epoch(swit, rep, True),
             "switokd learning": lambda rep: forced_epoch(swit, rep, False)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.repeats + 1):  # round 0 warms up
        results = {name: side(rep) for name, side in sides.items()}
        assert len({r.rows for r in results.values()}) == 1, "every side must train on the same number of rows"
        rows = results["dml"].rows
        if rep:
            for name, r in results.items():
                seconds[name].append(r.seconds)
        say_round(rep, ((name, rows / r.seconds) for name, r in results.items()))
    t = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"\nA = {args.student}, B = {args.peer}, {args.dataset} ({rows} images/epoch), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats} rounds:")
    print("| side | s/epoch | img/s |\n|---|---|---|")
    for name in ("ce A", "ce B", "dml", "switokd learning", "switokd expert"):
        print(f"| {name} | {t[name]:.2f} | {rows / t[name]:,.0f} |")
    print(f"switokd expert / learning time {t['switokd expert'] / t['switokd learning']:.3f} (must be < 1); "
          f"ratio (ce A + ce B) / dml {(t['ce A'] + t['ce B']) / t['dml']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
