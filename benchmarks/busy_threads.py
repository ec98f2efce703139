"""Threads on a shared CPU: training speed with one or all CPUs' worth of threads, and OpenMP's wait policy,
while other work keeps some of the CPUs busy. It decides what ``train.threads: auto`` and the command line do.

What is timed: ``forward, cross_entropy, zero_grad, backward, SGD step`` of a model on random inputs, batch 64,
channels_last (the CPU layout ``auto`` takes for these models), each setting in a fresh process (OpenMP reads
its wait policy once, when torch loads) for ``--seconds``. The load is ``--busy`` processes, each spinning one
CPU in a Python loop, standing for other people's work. Rounds alternate the settings; medians of
``--repeats`` rounds. The settings: ``1`` and ``N`` threads under OpenMP's default policy (threads spin a while
before they sleep: 300,000 spins in GNU libgomp), with a shorter spin (``GOMP_SPINCOUNT=10000``) and under
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once), N = the usable CPUs.

    python benchmarks/busy_threads.py --models cnn,resnet20 --busy 0,1,2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator

SHAPES = {"cnn": (1, 28), "resnet20": (3, 32)}
STEP = """
import sys, time
import torch
import torch.nn.functional as F
from selfdistill.models import build_model
arch, threads, seconds, channels, side = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model(arch, num_classes=10, in_channels=channels).to(memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(64, channels, side, side).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
def step():
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
images, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    step()
    images += 64
print(images / (time.perf_counter() - start))
"""


def settings(cpus: int) -> dict[str, tuple[int, dict[str, str]]]:
    """Name -> (threads, the OpenMP variables set)."""
    return {"1 thread": (1, {}), f"{cpus} threads": (cpus, {}),
            f"{cpus}, spin 10k": (cpus, {"GOMP_SPINCOUNT": "10000"}),
            f"{cpus}, passive": (cpus, {"OMP_WAIT_POLICY": "PASSIVE"})}


def images_per_s(arch: str, threads: int, variables: dict[str, str], seconds: float) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(variables)
    channels, side = SHAPES[arch]
    out = subprocess.run([sys.executable, "-c", STEP, arch, str(threads), str(seconds), str(channels), str(side)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """``processes`` CPUs kept busy by Python loops while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,resnet20")
    parser.add_argument("--busy", default="0,1,2", help="comma-separated counts of busy CPUs to measure under")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chosen = settings(cpus)
    print(f"{cpus} usable CPUs; images/s, medians of {args.repeats} rounds of {args.seconds:g} s")
    print(f"{'model':<10}{'busy CPUs':>10}" + "".join(f"{name:>16}" for name in chosen))
    for arch in args.models.split(","):
        for load in (int(b) for b in args.busy.split(",")):
            figures: dict[str, list[float]] = {name: [] for name in chosen}
            with busy(load):
                for _ in range(args.repeats):
                    for name, (threads, variables) in chosen.items():
                        figures[name].append(images_per_s(arch, threads, variables, args.seconds))
            print(f"{arch:<10}{load:>10}" + "".join(f"{statistics.median(f):>16,.0f}" for f in figures.values()),
                  flush=True)


if __name__ == "__main__":
    main()
