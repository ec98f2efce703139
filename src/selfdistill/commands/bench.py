"""``selfdistill bench``: training and evaluation images/s of one method/model/batch on this machine,
beside a bare PyTorch loop timed in the same process, so that a user can check their own hardware.

The engine is the :class:`~selfdistill.engine.Trainer` that ``selfdistill train`` builds from the same
flags, ``--config`` and ``--set`` (no ``--out``: nothing is written). What is timed, in rounds:

* **train**: one :meth:`Trainer.train_epoch` over ``steps × batch`` training images (a random subset of
  the configured training set, or all of it when it is smaller), i.e. ``steps`` steps of the real loop:
  augmentation, mixing, the method's extra rows, frozen teachers, every trainable network, the step's
  statistics. Images/s counts every forwarded row, as ``train`` does (DLB's replayed rows included);
* **bare loop**: the same number of steps of ``forward, cross_entropy, zero_grad, backward, step`` on a
  separate copy of the student (same architecture and initial weights), the same data tensors,
  batched augmentation, optimiser settings, batch size, memory layout, autocast and ``torch.compile``
  as the engine resolved; no method, no mixing: the reference the engine's overhead and the method's
  cost are read against. With frozen teachers it also forwards each of them (the engine's own, under
  ``inference_mode``) on the step's inputs, as a plain distillation loop must: otherwise the ratio would
  charge the teachers' inference to the engine;
* **eval**: the engine's evaluation (:func:`~selfdistill.engine.evaluate_networks` of every trainable
  network, at ``data.eval_batch_size``) over as many test images as a training round has.

The three alternate within each round; the first round is a warm-up and is not counted; each figure
is the median over ``repeats`` rounds. The **step overhead** is the engine's time per step less the bare
loop's, in µs (medians): at a tiny model and batch, where the model's own compute is negligible, it is
what the engine adds to every step (the method's extra work included). Timings on a busy machine are
indicative only, so the output gives the 1-minute load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Config
from ..cpus import usable_cpus, waits_passively
from ..data import ImageDataset, load_dataset, train_batches
from ..engine import Trainer, evaluate_networks
from ..engine.evaluate import teacher_predictions
from ..engine.optim import make_optimizer
from ..engine.runtime import derive_seed, synchronize
from ..errors import require
from ..models import build_model
from .train import train_config


def _subset(data: ImageDataset, size: int, seed: int) -> ImageDataset:
    """A random ``size`` of the training images (all of them when there are no more)."""
    if len(data.train_labels) <= size:
        return data
    keep = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(
        derive_seed(seed, "bench")))[:size].sort().values
    clean = data.clean_train_labels
    return replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep],
                   clean_train_labels=None if clean is None else clean[keep])


class BareLoop:
    """The minimal training step on a copy of the engine's student, as the engine places it, plus one forward of
    each of the engine's frozen teachers (their cost belongs to the job, not to the engine)."""

    def __init__(self, trainer: Trainer) -> None:
        cfg, d = trainer.config, trainer.data
        self.trainer = trainer
        torch.manual_seed(derive_seed(cfg.train.seed, "init"))  # the student's initial weights
        model = build_model(cfg.model.name, d.num_classes, d.in_channels, trainer.image_size, cfg.model.options)
        self.model = trainer.precision.model(model).to(trainer.device)
        self.optimizer = make_optimizer(list(self.model.parameters()), cfg.role_optim("student"))
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.teachers = trainer.teachers  # the FrozenNetwork objects the engine's step calls, folded and compiled alike
        self.step_seconds = 0.0  # the last run's time per step

    def run(self, round: int) -> float:
        """One pass over the training subset; returns images/s."""
        t, cfg, d, dev = self.trainer, self.trainer.config, self.trainer.data, self.trainer.device
        order = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "bench order", round))
        batches = train_batches(len(d.train_labels), t.batch_size, order, cfg.data.drop_last)
        generator = torch.Generator(device=dev).manual_seed(derive_seed(cfg.train.seed, "bench augment", round))
        self.model.train()
        rows = 0
        synchronize(dev)
        start = time.perf_counter()
        for idx in batches:
            idx = idx.to(dev, non_blocking=True)
            x = t.precision.inputs(t.augment(d.train_images[idx], generator))
            for teacher in self.teachers:
                teacher(x)  # under inference_mode, as in the engine's step
            with t.precision.autocast():
                loss = F.cross_entropy(self.forward(x), d.train_labels[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            rows += len(idx)
        synchronize(dev)
        seconds = time.perf_counter() - start
        self.step_seconds = seconds / max(len(batches), 1)
        return rows / seconds


def run_bench(config: Config, steps: int, repeats: int, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``repeats`` rounds (after one warm-up round) of the engine's training, the bare loop and the
    engine's evaluation; return the medians, every round's figures and the machine. ``say`` receives a
    line per round."""
    require(steps >= 1, "--steps", steps, "an integer >= 1")
    require(repeats >= 1, "--repeats", repeats, "an integer >= 1")
    cfg = config
    data = _subset(load_dataset(cfg.data, cfg.train.seed), steps * cfg.data.batch_size, cfg.train.seed)
    trainer = Trainer(cfg, dataset=data)
    bare = BareLoop(trainer)
    d, dev = trainer.data, trainer.device
    n_eval = min(len(d.test_labels), len(d.train_labels))
    images, labels = d.test_images[:n_eval], d.test_labels[:n_eval]
    teacher_eval = None
    if trainer.teachers:  # made once in a run too, so not timed
        teacher_eval = teacher_predictions([t.logits for t in trainer.teachers], images, labels, d.num_classes,
                                           trainer.augment, cfg.data.eval_batch_size, trainer.precision)
    networks = {net.role: net.model for net in trainer.nets}
    rounds: dict[str, list[float]] = {"train": [], "bare": [], "eval": [], "train_step_us": [], "bare_step_us": []}
    rows_per_step = 0.0
    for r in range(repeats + 1):
        bare_speed = bare.run(r)
        result = trainer.train_epoch(min(r, cfg.train.epochs - 1))
        synchronize(dev)
        start = time.perf_counter()
        evaluate_networks(networks, images, labels, d.num_classes, trainer.augment, cfg.data.eval_batch_size,
                          trainer.precision, teachers=teacher_eval)
        synchronize(dev)
        eval_speed = n_eval / (time.perf_counter() - start)
        train_speed = result.rows / result.seconds
        if say is not None:
            say(f"round {r}/{repeats}{' (warm-up)' if r == 0 else ''}: train {train_speed:,.0f}, bare loop "
                f"{bare_speed:,.0f}, eval {eval_speed:,.0f} images/s")
        if r:  # round 0 warms up
            rounds["train"].append(train_speed)
            rounds["bare"].append(bare_speed)
            rounds["eval"].append(eval_speed)
            rounds["train_step_us"].append(1e6 * result.seconds / trainer.steps)
            rounds["bare_step_us"].append(1e6 * bare.step_seconds)
            rows_per_step = result.rows / trainer.steps
    train, bare_median = statistics.median(rounds["train"]), statistics.median(rounds["bare"])
    train_step, bare_step = statistics.median(rounds["train_step_us"]), statistics.median(rounds["bare_step_us"])
    return {
        "method": trainer.method.name, "model": cfg.model.name, "dataset": cfg.data.dataset,
        "batch_size": cfg.data.batch_size, "eval_batch_size": cfg.data.eval_batch_size, "steps": trainer.steps,
        "rows_per_step": rows_per_step, "repeats": repeats, "eval_images": n_eval,
        "train_images_per_s": train, "bare_images_per_s": bare_median, "engine_over_bare": train / bare_median,
        "bare_loop": bare_loop_steps(len(trainer.teachers)),
        "train_step_us": train_step, "bare_step_us": bare_step, "step_overhead_us": train_step - bare_step,
        "step_overhead_of_bare": (train_step - bare_step) / bare_step,
        "eval_images_per_s": statistics.median(rounds["eval"]), "rounds": rounds,
        "teachers": [t.role for t in trainer.teachers], "networks": list(networks),
        **machine(dev), "amp": trainer.precision.amp, "channels_last": trainer.precision.channels_last,
        "compile": cfg.train.compile,
    }


def bare_loop_steps(teachers: int) -> str:
    """What one step of the bare loop does, for the table and the JSON."""
    forwards = f" (+ {teachers} teacher forward{'s' * (teachers != 1)})" if teachers else " alone"
    return f"forward, cross-entropy, backward, step of the student{forwards}"


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: the device, threads, CPUs, torch version and the load."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "torch": torch.__version__,
            "python": platform.python_version(), "load_1min": load,
            "omp_wait_policy": "passive" if waits_passively() else "default"}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_bench(r: dict[str, Any]) -> str:
    """The result as a small table with the machine and the load beneath."""
    layout = ", ".join(["bf16 autocast" if r["amp"] else "fp32", "channels_last" if r["channels_last"] else "NCHW",
                        *(["compiled"] if r["compile"] else [])])
    extra = f"; networks {'+'.join(r['networks'])}" if len(r["networks"]) > 1 else ""
    extra += f"; teachers {', '.join(r['teachers'])}" if r["teachers"] else ""
    lines = [
        f"{r['method']} on {r['dataset']} with {r['model']}, batch {r['batch_size']}: medians of {r['repeats']} "
        f"rounds of {r['steps']} steps (after 1 warm-up round)",
        "",
        f"{'':<18}{'images/s':>10}",
        f"{'train (engine)':<18}{r['train_images_per_s']:>10,.0f}   {r['rows_per_step']:.0f} rows forwarded per "
        f"step{extra}",
        f"{'train (bare loop)':<18}{r['bare_images_per_s']:>10,.0f}   {r['bare_loop']}",
        f"{'engine / bare':<18}{r['engine_over_bare']:>10.2f}",
        f"{'step overhead':<18}{r['step_overhead_us']:>10,.0f}   µs per step: engine {r['train_step_us']:,.0f} − bare "
        f"loop {r['bare_step_us']:,.0f} µs ({100 * r['step_overhead_of_bare']:+.0f} % of the bare step)",
        f"{'eval (engine)':<18}{r['eval_images_per_s']:>10,.0f}   {r['eval_images']:,} test images, batch "
        f"{r['eval_batch_size']}",
        "",
        f"machine: {r['device']} ({r['device_name']}), {r['threads']} thread{'s' * (r['threads'] != 1)}, "
        f"{r['cpus']} CPUs"
        + (f" ({r['usable_cpus']} usable)" if r["usable_cpus"] != r["cpus"] else "")
        + f", torch {r['torch']}, {layout}"
        + ("; idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)" if r.get("omp_wait_policy") == "passive" else ""),
    ]
    load, cpus = r["load_1min"], r["usable_cpus"]
    if load is None:
        lines.append("timings are indicative when other work shares the machine")
    elif load >= cpus:
        lines.append(f"load average (1 min) {load:.2f} on {cpus} CPUs: the machine is busy, so these timings are "
                     "indicative only")
    else:
        lines.append(f"load average (1 min) {load:.2f} on {cpus} CPUs; timings are indicative when other work "
                     "shares the machine")
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    args.set = [*args.set, "train.progress=false", "train.status_every=0"]  # the table is all it prints
    config, _ = train_config(args)

    def say(line: str) -> None:  # a line per round, on a terminal
        print(line, file=sys.stderr, flush=True)

    result = run_bench(config, args.steps, args.repeats, say if sys.stderr.isatty() else None)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0
