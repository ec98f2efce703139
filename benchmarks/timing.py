"""What the speed benchmarks share: their common options, the in-memory data they time on, the trainer, a
teacher with random weights, and the line each timed round prints."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from selfdistill.data import ImageDataset, load_dataset
from selfdistill.engine import Trainer, resolve
from selfdistill.errors import UserError
from selfdistill.models import build_model


def timing_parser(doc: str, batch_help: str | None = None) -> argparse.ArgumentParser:
    """A parser with the options every speed benchmark takes; the script adds its own, then calls
    :func:`parse_timing_args`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--images", type=int, default=12000, help="training images per epoch (balanced subset)")
    parser.add_argument("--batch-size", type=int, default=64, help=batch_help)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    return parser


def parse_timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options, with torch's thread count set to ``--threads`` when given."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def timing_data(args: argparse.Namespace) -> ImageDataset:
    """``args.images`` training images (a balanced subset) of ``args.dataset``; without the full
    Fashion-MNIST here, the bundled 6,000-image slice, whole or a subset of it (``args`` says which)."""
    try:
        return load_dataset(resolve([{"data": {"dataset": args.dataset, "train_subset": args.images}}]).data)
    except UserError:
        args.dataset, args.images = "fashion-mnist-mini", min(args.images, 6000)
        subset = args.images if args.images < 6000 else None
        return load_dataset(resolve([{"data": {"dataset": args.dataset, "train_subset": subset}}]).data)


def timing_trainer(args: argparse.Namespace, images: ImageDataset, /, **sections: Any) -> Trainer:
    """A trainer on ``images`` for timing epochs: ``args``' dataset, batch size, subset and threads, a constant
    learning rate, no progress output; ``sections`` (method, model, teachers, data, train ...) override."""
    base = {"data": {"dataset": args.dataset, "batch_size": args.batch_size, "train_subset": args.images},
            "schedule": {"name": "constant"},
            "train": {"epochs": 100, "threads": args.threads, "progress": False, "status_every": 0}}
    return Trainer(resolve([base, sections]), dataset=images)


@contextmanager
def random_teacher(model: str, images: ImageDataset) -> Iterator[dict[str, str]]:
    """A teacher entry (``teachers=[...]``) for a ``model`` with seeded random weights, saved to a temporary
    file for as long as the ``with`` block lasts: what a teacher costs does not depend on its weights."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "teacher.pt"
        torch.manual_seed(1)
        torch.save(build_model(model, images.num_classes, images.in_channels, images.image_size).state_dict(), weights)
        yield {"path": str(weights), "model": model}


def say_round(rep: int, rates: Iterable[tuple[str, float]]) -> None:
    """Print one timed round's images/s (round 0 is the warm-up)."""
    print(f"round {rep}{' (warm-up)' if rep == 0 else ''}: "
          + ", ".join(f"{name} {rate:,.0f} img/s" for name, rate in rates), flush=True)
