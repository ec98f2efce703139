"""DLB's cost per image: training images/s of DLB (new + replayed rows) against CE at the same
forward batch size (CE with batch 2B, DLB with batch B plus B replayed rows).

What is timed: the engine's training loop only (no evaluation, no checkpointing), after one warm-up
epoch each. CE and DLB epochs alternate ``--repeats`` times in one process on the same data and
model architecture; the median of each is reported. DLB's extra work over CE at equal forward size
is re-augmenting the replayed rows, one KL over them and keeping one batch of logits.

    python benchmarks/dlb_cost.py                          # small CNN, full Fashion-MNIST if found
    python benchmarks/dlb_cost.py --model resnet20 --images 3000
"""

from __future__ import annotations

import statistics

import torch
from timing import parse_timing_args, say_round, timing_data, timing_parser, timing_trainer


def main() -> None:
    parser = timing_parser(__doc__, batch_help="DLB's new rows per step (CE uses twice this)")
    parser.add_argument("--model", default="cnn")
    args = parse_timing_args(parser)
    data = timing_data(args)
    ce = timing_trainer(args, data, method={"name": "ce"}, model={"name": args.model},
                        data={"batch_size": 2 * args.batch_size})
    dlb = timing_trainer(args, data, method={"name": "dlb"}, model={"name": args.model})
    rates: dict[str, list[float]] = {"ce": [], "dlb": []}
    for rep in range(args.repeats + 1):  # round 0 warms up
        for name, trainer in (("ce", ce), ("dlb", dlb)):
            result = trainer.train_epoch(rep)
            rate = result.rows / result.seconds
            if rep:
                rates[name].append(rate)
            say_round(rep, [(name, rate)])
    c, d = statistics.median(rates["ce"]), statistics.median(rates["dlb"])
    print(f"\n{args.model}, {args.dataset} ({args.images} images/epoch), forward batch {2 * args.batch_size}, "
          f"{torch.get_num_threads()} threads: CE {c:,.0f} img/s, DLB {d:,.0f} img/s, ratio {d / c:.3f}")


if __name__ == "__main__":
    main()
