"""In-place residual blocks: one training step (forward, CE, backward, SGD step) with the out-of-place block
forwards of before issue 10 ("old", kept in tests/test_inplace_models.py as the reference) against the in-place
ones ("new"), same weights and batch, steps interleaved old/new/new/old..., medians (and the median of the
per-pair ratios); the 1-minute load average before and after each run is printed.

    python benchmarks/inplace_blocks.py --model resnet20 --threads 1,2 --steps 150 [--layout nhwc]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from selfdistill.models import build_model  # noqa: E402
from test_inplace_models import OLD  # noqa: E402  (the reference forwards live with their tests)


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    fmt = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    torch.manual_seed(0)
    base = build_model(args.model, 10, 3, 32)
    runs = {}
    for side in ("old", "new"):
        model = build_model(args.model, 10, 3, 32)
        model.load_state_dict(base.state_dict())
        model = model.to(memory_format=fmt).train()
        if side == "old":
            for block in model.modules():
                if type(block) in OLD:
                    block.forward = types.MethodType(OLD[type(block)], block)
        runs[side] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4))
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,))

    def step(side: str) -> float:
        model, optimizer = runs[side]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for _ in range(5):
            step("old")
            step("new")
        times: dict[str, list[float]] = {"old": [], "new": []}
        before = load_average()
        for i in range(args.steps):
            for side in ("old", "new") if i % 2 == 0 else ("new", "old"):
                times[side].append(step(side))
        median = {side: statistics.median(v) for side, v in times.items()}
        pairs = sorted(n / o for n, o in zip(times["new"], times["old"]))
        print(f"{args.model} {args.layout} batch {args.batch}, {threads} thread(s), {args.steps} steps, load "
              f"{before}->{load_average()}: old {median['old'] * 1e3:.1f} ms, new {median['new'] * 1e3:.1f} ms, "
              f"new/old {median['new'] / median['old']:.3f} (median of paired ratios {pairs[len(pairs) // 2]:.3f})",
              flush=True)


if __name__ == "__main__":
    main()
