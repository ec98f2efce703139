"""The cost of mixing: training images/s of CE with mixup and with CutMix against plain CE, at the
same batch, model and data.

What is timed: the engine's training loop only (no evaluation, no checkpointing). The three runs
alternate ``--repeats`` times in one process after a warm-up epoch each; medians. Mixing adds one
Beta draw per batch and a blend (mixup) or a box paste (CutMix) of the batch with a permutation of
itself, and two CE terms per step. Both use the engine's defaults (``data.mix``: alpha 1, CutMix on
a batch with probability 0.5, mixup on every batch).

    python benchmarks/mix_cost.py --images 8000 --repeats 3
"""

from __future__ import annotations

import statistics

import torch
from timing import parse_timing_args, say_round, timing_data, timing_parser, timing_trainer

MIXES = ("none", "mixup", "cutmix")


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--model", default="cnn")
    args = parse_timing_args(parser)
    data = timing_data(args)
    trainers = {mix: timing_trainer(args, data, model={"name": args.model}, data={"mix": {"name": mix}})
                for mix in MIXES}
    rates: dict[str, list[float]] = {mix: [] for mix in MIXES}
    for rep in range(args.repeats + 1):  # round 0 warms up
        now = {}
        for mix, trainer in trainers.items():
            result = trainer.train_epoch(rep)
            now[mix] = result.rows / result.seconds
            if rep:
                rates[mix].append(now[mix])
        say_round(rep, now.items())
    ce, mixup, cutmix = (statistics.median(rates[mix]) for mix in MIXES)
    print(f"\n{args.model}, {args.dataset} ({args.images} images/epoch), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads: CE {ce:,.0f} img/s, mixup {mixup:,.0f} img/s, CutMix {cutmix:,.0f} "
          f"img/s; ratio mixup/CE {mixup / ce:.3f}, ratio CutMix/CE {cutmix / ce:.3f}")


if __name__ == "__main__":
    main()
