"""Evaluation's share of a training epoch, at two evaluation batch sizes.

What is timed: one training epoch of ``--model`` with CE on the whole training set (the engine's
``Trainer.train_epoch``, the run's layout), then the engine's evaluation of the student on the whole
test set (``evaluate_networks``), 3 times, median; for each evaluation batch size in ``--eval-batch-sizes``.

    python benchmarks/eval_share.py --model cnn
    python benchmarks/eval_share.py --model resnet20
"""

from __future__ import annotations

import argparse
import statistics
import time

from selfdistill.engine import Trainer, resolve
from selfdistill.engine.evaluate import evaluate_networks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--eval-batch-sizes", default="128,1000")
    parser.add_argument("--train-subset", type=int, default=None)
    args = parser.parse_args()
    for batch in map(int, args.eval_batch_sizes.split(",")):
        data = {"dataset": args.dataset, "eval_batch_size": batch, "train_subset": args.train_subset}
        config = resolve([{"model": {"name": args.model}, "data": data,
                           "train": {"epochs": 2, "progress": False, "status_every": 0}}])
        trainer = Trainer(config)
        epoch = trainer.train_epoch(0).seconds
        d = trainer.data
        times = []
        for _ in range(3):
            start = time.perf_counter()
            evaluate_networks({"student": trainer.model}, d.test_images, d.test_labels, d.num_classes, trainer.augment,
                              batch, trainer.precision)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        layout = "channels_last" if trainer.precision.channels_last else "NCHW"
        print(f"{args.model} ({layout}), eval batch {batch}: training epoch {epoch:.1f} s ({len(d.train_labels):,} "
              f"images), evaluation {seconds:.2f} s ({len(d.test_labels):,} images) = {100 * seconds / epoch:.1f} % "
              "of the epoch", flush=True)


if __name__ == "__main__":
    main()
