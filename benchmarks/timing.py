"""What the speed benchmarks share: the in-memory data they time on."""

from __future__ import annotations

import argparse

from selfdistill.config import resolve
from selfdistill.data import ImageDataset, load_dataset
from selfdistill.errors import UserError


def timing_data(args: argparse.Namespace) -> ImageDataset:
    """``args.images`` training images (a balanced subset) of ``args.dataset``; without the full
    Fashion-MNIST here, the bundled 6,000-image slice, whole or a subset of it (``args`` says which)."""
    try:
        return load_dataset(resolve([{"data": {"dataset": args.dataset, "train_subset": args.images}}]).data)
    except UserError:
        args.dataset, args.images = "fashion-mnist-mini", min(args.images, 6000)
        subset = args.images if args.images < 6000 else None
        return load_dataset(resolve([{"data": {"dataset": args.dataset, "train_subset": subset}}]).data)
