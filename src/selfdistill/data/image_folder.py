"""Reader for image-folder trees such as Tiny-ImageNet, decoded once into uint8 tensors.

Two layouts are understood, both with class folders under ``train/``:

* Tiny-ImageNet: ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt`` (file name, tab, class folder name);
* generic: ``train/<class>/**/*`` and ``val/<class>/**/*`` (or ``test/<class>/**/*``).

Images are converted to RGB and resized to ``size`` x ``size`` (bilinear, antialiased) once, at load
time; the DLB and LightSKD recipes train Tiny-ImageNet at 32 x 32. Decoding needs Pillow
(``pip install 'selfdistill[images]'``).

The decoded tensors are cached in ``user_cache()/decoded/`` so later runs start in seconds (not with
``SELFDISTILL_NO_CACHE`` set to anything but ``0``). The cache key covers everything the tensors depend
on: the relative path, label and content (BLAKE2b of the bytes) of every image, the annotations file's
bytes, the decode size and the cache format, so an image replaced under the same name is decoded again,
also one of the same size whose modification time was kept (``cp -p``, ``rsync -a``). Hashing reads
every image at each start (about a second per few hundred MB), far less than decoding them. The cache
is written atomically; a damaged cache file is an error that names it, and a cache that cannot be
written (read-only or full disk) only costs a warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import UserError, one_line
from ..fileio import atomic_torch_save, open_regular
from .sources import decode_cache_disabled, user_cache

EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
CACHE_FORMAT = 3  # bump when the cached content or its key changes
CACHE_KEYS = ("train_x", "train_y", "val_x", "val_y")
Samples = list[tuple[Path, int]]


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def list_samples(root: Path) -> tuple[list[str], Samples, Samples]:
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
        val = _annotated(annotations, index)
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


def _annotated(annotations: Path, index: dict[str, int]) -> Samples:
    """The validation samples listed in ``val_annotations.txt``: plain file names in ``val/images/`` only,
    so that no line can make the reader open a file outside the dataset folder."""
    images = annotations.parent / "images"
    try:
        text = annotations.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{annotations} is not UTF-8 text (lines: file name, tab, class folder name)") from None
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"{annotations}, line {number}: cannot read {line[:60]!r} (unknown class?)")
        name = parts[0]
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise UserError(f"{annotations}, line {number}: {name[:60]!r} is not a plain file name; only names of "
                            f"files in {images} are allowed")
        samples.append((images / name, index[parts[1]]))
    return samples


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image-folder datasets need Pillow: pip install 'selfdistill[images]'") from None
    return Image


def _decode(samples: Samples, size: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    image_module = _pillow()
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, (path, _) in enumerate(tqdm(samples, desc=f"decoding {what}", unit="img", leave=False,
                                       disable=not os.isatty(2))):
        pixels = torch.frombuffer(bytearray(_decode_one(image_module, path, size)), dtype=torch.uint8)
        images[i] = pixels.view(size, size, 3).permute(2, 0, 1)
    return images, _labels(samples)


def _decode_one(image_module: Any, path: Path, size: int) -> bytes:
    """The RGB pixels of one image resized to ``size`` x ``size``.

    Pillow's plugins fail on a malformed file with many exception classes (``OSError``,
    ``UnidentifiedImageError``, ``SyntaxError``, ``ValueError``, ``struct.error``, and
    ``DecompressionBombError`` for an image with too many pixels), so any of them means "cannot be decoded".
    """
    with open_regular(path, f"image {path}") as handle:  # an image listed in val_annotations.txt may be a FIFO
        try:
            with image_module.open(handle) as img:
                return img.convert("RGB").resize((size, size), image_module.BILINEAR).tobytes()
        except Exception as exc:
            raise UserError(f"image {path} cannot be decoded ({type(exc).__name__}: {one_line(exc)[:160]})") from None


def _labels(samples: Samples) -> torch.Tensor:
    return torch.tensor([label for _, label in samples], dtype=torch.int64)


def _cache_key(root: Path, size: int, train: Samples, val: Samples) -> str:
    """A digest of everything the decoded tensors depend on (see the module docstring)."""
    digest = hashlib.sha256(f"selfdistill decoded images, format {CACHE_FORMAT}, size {size}".encode())
    for split, samples in (("train", train), ("val", val)):
        digest.update(f"\0{split}".encode())
        for path, label in samples:
            try:
                with open_regular(path, f"image {path}") as handle:  # a FIFO listed as an image would block
                    content = hashlib.file_digest(handle, "blake2b").digest()
            except OSError as exc:
                raise UserError(f"image {path} cannot be read ({one_line(exc.strerror or exc)})") from None
            digest.update(b"\0" + os.fsencode(path.relative_to(root)) + f"\0{label}\0".encode() + content)
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        digest.update(b"\0annotations\0" + annotations.read_bytes())
    return digest.hexdigest()


def _load_cache(cache: Path, size: int, train: Samples, val: Samples) -> tuple[torch.Tensor, ...] | None:
    """The cached tensors, None if there is no cache file; a cache that does not hold exactly the expected
    tensors is an error naming it (loaded with ``weights_only``, so it cannot run code)."""
    try:
        saved = torch.load(cache, weights_only=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception:  # torch.load fails with many classes on a truncated or foreign file
        saved = None
    expected = {"train_y": _labels(train), "val_y": _labels(val)}
    shapes = {"train_x": (len(train), 3, size, size), "val_x": (len(val), 3, size, size)}
    valid = (isinstance(saved, dict) and set(saved) == set(CACHE_KEYS)
             and all(isinstance(saved[k], torch.Tensor) for k in CACHE_KEYS)
             and all(saved[k].dtype == torch.uint8 and tuple(saved[k].shape) == shape for k, shape in shapes.items())
             and all(saved[k].dtype == torch.int64 and torch.equal(saved[k], y) for k, y in expected.items()))
    if not valid:
        raise UserError(f"decoded-image cache {cache} is corrupt; delete it and the images will be decoded again")
    return tuple(saved[k] for k in CACHE_KEYS)


def _save_cache(cache: Path, tensors: tuple[torch.Tensor, ...]) -> None:
    """Write the cache atomically; if that fails, warn on one line and go on without it."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(cache, dict(zip(CACHE_KEYS, tensors)))
    except OSError as exc:
        print(f"warning: cannot write the decoded-image cache {cache} ({one_line(exc.strerror or exc)}); "
              "continuing without it", file=sys.stderr, flush=True)


def read_image_folder(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Train images, train labels, validation images, validation labels and the number of classes."""
    try:
        classes, train, val = list_samples(root)
        cache = None if decode_cache_disabled() else \
            user_cache() / "decoded" / f"{root.name}-{size}-{_cache_key(root, size, train, val)[:16]}.pt"
    except OSError as exc:
        raise UserError(f"image folder {root} cannot be read ({one_line(exc)})") from None
    tensors = _load_cache(cache, size, train, val) if cache is not None else None
    if tensors is None:
        tensors = (*_decode(train, size, "train"), *_decode(val, size, "val"))
        if cache is not None:
            _save_cache(cache, tensors)
    train_x, train_y, val_x, val_y = tensors
    return train_x, train_y, val_x, val_y, len(classes)
