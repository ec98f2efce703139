"""A teacher's cost: a KD step should cost a CE step plus one teacher inference, and nothing else.

What is timed, all in one process on the same data (in-memory uint8, the engine's batched augmentation),
the same student architecture and init, the same batch size and optimiser, training loop only (no
evaluation, no checkpointing), after one warm-up round:

* ``ce``: one epoch of the engine with ``--method ce`` (``Trainer.train_epoch``);
* ``kd``: one epoch of the engine with the KD method (default ``kd``) and one frozen teacher;
* ``teacher``: the teacher alone on the same number of batches of the same size: the rows are augmented
  first (not timed), then only ``teacher(x)`` is timed, in eval mode under ``torch.inference_mode``, i.e.
  the bare inference with none of the engine's bookkeeping.

The three alternate ``--repeats`` times; medians of each. Reported: throughput of KD against the sum
(CE epoch time + teacher time), ``(ce + teacher) / kd`` (target >= 0.95), and against CE alone. The
teacher's weights are its random init (saved to a temporary weights file and given to the engine as
``PATH:ARCH``, like any teacher): its cost does not depend on what it has learnt.

    python benchmarks/teacher_cost.py --images 12000 --repeats 5                       # cnn <- resnet20
    python benchmarks/teacher_cost.py --student resnet20 --teacher resnet56 --images 3000 --repeats 5
"""

from __future__ import annotations

import statistics
import time

import torch
from timing import parse_timing_args, random_teacher, say_round, timing_data, timing_parser, timing_trainer

from selfdistill.engine import Trainer
from selfdistill.engine.runtime import derive_seed, synchronize


def teacher_epoch(trainer: Trainer, epoch: int) -> float:
    """Seconds of the bare teacher inference over one epoch of the trainer's batches (same sizes, same
    augmentation); the augmentation itself is not timed."""
    teacher = trainer.teachers[0]  # its module is in eval mode; .logits adds only autocast where AMP is on
    generator = torch.Generator(trainer.device).manual_seed(derive_seed(0, "teacher-cost", epoch))
    inputs = [trainer.precision.inputs(trainer.augment(trainer.data.train_images[idx.to(trainer.device)], generator))
              for idx in trainer._epoch_batches(epoch)]
    synchronize(trainer.device)
    start = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            teacher.logits(x)
    synchronize(trainer.device)
    return time.perf_counter() - start


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--student", default="cnn")
    parser.add_argument("--teacher", default="resnet20", help="the teacher's architecture")
    parser.add_argument("--method", default="kd", help="the KD method timed (one frozen teacher)")
    args = parse_timing_args(parser)
    data = timing_data(args)

    with random_teacher(args.teacher, data) as teacher:
        ce = timing_trainer(args, data, method={"name": "ce"}, model={"name": args.student})
        kd = timing_trainer(args, data, method={"name": args.method}, model={"name": args.student},
                            teachers=[teacher])
        seconds: dict[str, list[float]] = {"ce": [], "teacher": [], "kd": []}
        for rep in range(args.repeats + 1):  # round 0 warms up
            ce_result = ce.train_epoch(rep)
            t = teacher_epoch(kd, rep)
            kd_result = kd.train_epoch(rep)
            assert ce_result.rows == kd_result.rows, "CE and KD must train on the same rows"
            if rep:
                seconds["ce"].append(ce_result.seconds)
                seconds["teacher"].append(t)
                seconds["kd"].append(kd_result.seconds)
            rows = ce_result.rows
            say_round(rep, [("ce", rows / ce_result.seconds), ("teacher alone", rows / t),
                            (args.method, rows / kd_result.seconds)])
    c, t, k = (statistics.median(seconds[name]) for name in ("ce", "teacher", "kd"))
    print(f"\n{args.student} <- {args.teacher}, {args.dataset} ({rows} images/epoch), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads: CE {rows / c:,.0f} img/s, teacher alone {rows / t:,.0f} img/s, "
          f"CE + teacher {rows / (c + t):,.0f} img/s, {args.method} {rows / k:,.0f} img/s; "
          f"{args.method} / CE {c / k:.3f}, ratio (CE + teacher) / {args.method} {(c + t) / k:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
