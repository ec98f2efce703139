"""What a frozen teacher's forward costs on this machine, in the ways the engine could run it: as it
does now (eval mode, channels_last, ``inference_mode``), with its batch norms folded into the
preceding convolutions (``torch.fx.experimental.optimization.fuse``, which also checks the folded
network's outputs here), and under ``torch.compile`` (inductor, which folds and fuses on its own).

One warm-up pass, then ``--repeats`` alternating rounds of ``--steps`` forwards of a batch each;
medians of the per-round times, and the ratio of each variant to the engine's way. The inputs are
random images of the data's shape; the weights are random, with random batch-norm statistics, so
folding has something to fold.

    python benchmarks/teacher_inference.py --models resnet56 resnet20 cnn --channels 3 --size 32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
from torch.fx.experimental.optimization import fuse

from selfdistill.models import build_model


def randomised(model: nn.Module) -> nn.Module:
    """Random batch-norm statistics and affine parameters (a trained network's are not 0/1)."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval().requires_grad_(False)


def variants(model: nn.Module) -> dict[str, nn.Module]:
    plain = model.to(memory_format=torch.channels_last)
    out = {"engine (channels_last, inference_mode)": plain}
    try:
        out["batch norms folded"] = fuse(copy.deepcopy(plain)).to(memory_format=torch.channels_last)
    except Exception as e:  # an architecture fx cannot trace: said, and left out
        print(f"  folding: not traceable ({type(e).__name__})")
    out["torch.compile"] = torch.compile(copy.deepcopy(plain))
    return out


def time_round(net: nn.Module, x: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            net(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "resnet20", "cnn"])
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, args.channels, args.size, args.size).contiguous(memory_format=torch.channels_last)
    print(f"batch {args.batch_size} x {args.channels}x{args.size}x{args.size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; medians of {args.repeats} rounds of {args.steps} forwards")
    for name in args.models:
        model = randomised(build_model(name, 100 if args.channels == 3 else 10, args.channels, args.size))
        nets = variants(model)
        with torch.inference_mode():
            reference = nets["engine (channels_last, inference_mode)"](x)
            for label, net in nets.items():  # warm-up (compilation) and agreement
                gap = (net(x) - reference).abs().max().item()
                print(f"  {name} {label}: max |logit difference| {gap:.2e}")
        times: dict[str, list[float]] = {label: [] for label in nets}
        for _ in range(args.repeats):
            for label, net in nets.items():
                times[label].append(time_round(net, x, args.steps))
        base = statistics.median(times["engine (channels_last, inference_mode)"])
        for label, t in times.items():
            m = statistics.median(t)
            print(f"{name:<10} {label:<40} {1000 * m / args.steps:8.2f} ms/batch   ratio {m / base:.3f}")


if __name__ == "__main__":
    main()
