"""Evaluation speed by batch size and memory layout: inference time of 4,000 random images (the models'
eval mode, ``inference_mode``), relative to batch 1000 in NCHW. One warm-up pass per setting, then 3
rounds of every setting in turn, medians.

    python benchmarks/eval_batch.py --models cnn:1x28,resnet20:1x28 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from selfdistill.models import build_model

LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def seconds(model, x: torch.Tensor, batch: int, fmt: torch.memory_format) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i:i + batch].contiguous(memory_format=fmt))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn:1x28,resnet20:1x28", help="name:CxS, comma-separated")
    parser.add_argument("--batches", default="128,256,512,1000")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    for spec in args.models.split(","):
        name, shape = spec.split(":")
        channels, size = map(int, shape.split("x"))
        model = build_model(name, 10, channels, size).eval()
        x = torch.randn(4000, channels, size, size)
        settings = [(layout, batch) for layout in LAYOUTS for batch in batches]
        times: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
        for rep in range(4):
            for layout, batch in settings:
                t = seconds(model.to(memory_format=LAYOUTS[layout]), x, batch, LAYOUTS[layout])
                if rep:
                    times[(layout, batch)].append(t)
        base = statistics.median(times[("NCHW", 1000)]) if ("NCHW", 1000) in times else 1.0
        ratios = (f"{layout}/{batch} {statistics.median(v) / base:.2f}" for (layout, batch), v in times.items())
        print(name, " ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
