"""``selfdistill train``: one run from the flags, ``--config`` and ``--set``, in this process or in
``--nproc`` processes on this machine."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..config import Config, load_yaml, nested, parse_assignment
from ..distributed import launched_rank
from ..engine import resolve, train
from ..engine.launch import launch
from ..engine.rundir import resume_point
from ..errors import UserError
from ..fileio import unused_path
from .flags import TRAIN_FLAGS


def train_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """The run's config from the layers (a resumed run's saved config, ``--config``, the flags, ``--set``) and
    its run directory (``--out``, or a fresh name under ``runs/``)."""
    layers: list[dict[str, Any]] = []
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out, the run directory to continue")
        layers.append(resume_point(Path(args.out), mmap=True)[0])  # the trainer loads the tensors itself
    if args.config:
        layers.append(load_yaml(args.config))
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            layers.append(nested(key, value))
    if args.teacher:
        layers.append({"teachers": list(args.teacher)})
    layers += [parse_assignment(item) for item in args.set]
    config = resolve(layers)
    out = Path(args.out) if args.out else unused_path(Path("runs") / (
        f"{config.method['name']}-{config.data.dataset}-{config.model.name.replace(':', '.')}-s{config.train.seed}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}"))
    return config, out


def run(args: argparse.Namespace, argv: list[str]) -> int:
    config, out = train_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    cpus = os.cpu_count() or 1
    if not 1 <= args.nproc <= cpus:
        raise UserError.bad_value("--nproc", args.nproc, f"an integer from 1 to the {cpus} CPUs of this machine")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(argv if args.out else [*argv, "--out", str(out)], args.nproc)
    metrics = train(config, out, resume=args.resume)
    if launched_rank() == 0:
        split = metrics.get("eval_split", "test")
        print(f"done: {split} top-1 {metrics[f'{split}_top1']:.2f}%, NLL {metrics[f'{split}_nll']:.4f}, "
              f"ECE {metrics[f'{split}_ece']:.2f}% -> {out}")
    return 0
