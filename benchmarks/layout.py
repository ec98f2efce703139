"""Memory layout on a CPU: the time of one training step in channels_last (NHWC) against NCHW, per model.

What is timed: ``forward, cross_entropy, zero_grad, backward, SGD step`` on random inputs, batch 64, the
same initial weights in both layouts (weights and inputs converted to the layout). Each round times a few
steps of every layout in turn; one warm-up round, then ``--repeats`` rounds, medians. The result decides
``train.channels_last: auto`` on a CPU (``selfdistill.models.CPU_CHANNELS_LAST``).

    python benchmarks/layout.py --models cnn:1x28,resnet20:3x32,vgg8:3x32 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from selfdistill.models import build_model

LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def step_seconds(model, x, y, optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn:1x28,resnet20:1x28,resnet20:3x32,wrn_16_1:3x32,vgg8:3x32,"
                                            "MobileNetV2:3x32,mlp:1x28", help="name:CxS, comma-separated")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, batch {args.batch_size}, medians of {args.repeats} rounds of {args.steps} steps")
    for spec in args.models.split(","):
        name, shape = spec.split(":")
        channels, size = map(int, shape.split("x"))
        torch.manual_seed(0)
        weights = build_model(name, 10, channels, size).state_dict()
        sides = {}
        for layout, fmt in LAYOUTS.items():
            model = build_model(name, 10, channels, size)
            model.load_state_dict(weights)
            model = model.to(memory_format=fmt)
            x = torch.randn(args.batch_size, channels, size, size).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (args.batch_size,))
            sides[layout] = (model, x, y, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        times = {layout: [] for layout in sides}
        for rep in range(args.repeats + 1):
            for layout, side in sides.items():
                seconds = step_seconds(*side, args.steps)
                if rep:
                    times[layout].append(seconds)
        nchw, nhwc = statistics.median(times["nchw"]), statistics.median(times["nhwc"])
        print(f"{name:12s} {channels}x{size}x{size}  NCHW {nchw * 1000:7.1f} ms  NHWC {nhwc * 1000:7.1f} ms  "
              f"NHWC/NCHW {nhwc / nchw:.2f}", flush=True)


if __name__ == "__main__":
    main()
