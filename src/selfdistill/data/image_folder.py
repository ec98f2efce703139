"""Reader for image-folder trees such as Tiny-ImageNet, decoded once into uint8 tensors.

Two layouts are understood, both with class folders under ``train/``:

* Tiny-ImageNet: ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt`` (file name, tab, class folder name);
* generic: ``train/<class>/**/*`` and ``val/<class>/**/*`` (or ``test/<class>/**/*``).

Images are converted to RGB and resized to ``size`` x ``size`` (bilinear, antialiased) once, at load
time; the DLB and LightSKD recipes train Tiny-ImageNet at 32 x 32. Decoding needs Pillow
(``pip install 'selfdistill[images]'``). The decoded tensors are cached in the user cache, keyed by
the folder's absolute path, its file list and the size, so later runs start in seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import UserError
from .sources import user_cache

EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def list_samples(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Class names and (path, label) pairs for the train and validation splits."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise UserError(f"image folder {root} has no train/ directory")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise UserError(f"image folder {train_dir} needs at least two class folders, found {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    train = [(p, index[c]) for c in classes for p in _images_under(train_dir / c)]

    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        val = []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise UserError(f"{annotations}: cannot read line {line[:60]!r} (unknown class?)")
            val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    else:
        val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if val_dir is None:
            raise UserError(f"image folder {root} has neither val/ nor test/")
        unknown = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and d.name not in index)
        if unknown:
            raise UserError(f"{val_dir} has class folders that train/ lacks: {', '.join(unknown[:5])}")
        val = [(p, index[d.name]) for d in sorted(val_dir.iterdir()) if d.is_dir() for p in _images_under(d)]
    if not train or not val:
        raise UserError(f"image folder {root}: no images found in {'train' if not train else 'val'}")
    return classes, train, val


def _decode(samples: list[tuple[Path, int]], size: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image-folder datasets need Pillow: pip install 'selfdistill[images]'") from None
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    for i, (path, _) in enumerate(tqdm(samples, desc=f"decoding {what}", unit="img", leave=False,
                                       disable=not os.isatty(2))):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
                images[i] = pixels.view(size, size, 3).permute(2, 0, 1)
        except (OSError, ValueError) as exc:
            raise UserError(f"image {path} cannot be decoded ({exc})") from None
    return images, labels


def read_image_folder(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Train images, train labels, validation images, validation labels and the number of classes."""
    classes, train, val = list_samples(root)
    key = hashlib.sha256(f"{root.resolve()}|{size}|{len(train)}|{len(val)}|{train[-1][0]}|{val[-1][0]}".encode())
    cache = user_cache() / "decoded" / f"{root.name}-{size}-{key.hexdigest()[:16]}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["train_x"], saved["train_y"], saved["val_x"], saved["val_y"], len(classes)
    train_x, train_y = _decode(train, size, "train")
    val_x, val_y = _decode(val, size, "val")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}, tmp)
    os.replace(tmp, cache)
    return train_x, train_y, val_x, val_y, len(classes)
