"""Image trees such as Tiny-ImageNet, from a folder or straight from a tar archive of one, decoded once into
uint8 tensors (layouts: ``tree.py``; archives: ``archive.py``; decoding: ``decode.py``).

The decoded tensors are cached in ``user_cache()/decoded/`` so later runs start in seconds (not with
``SELFDISTILL_NO_CACHE`` set to anything but ``0``). The cache key covers everything the tensors depend
on. For a folder: the relative path, label and content (BLAKE2b of the bytes) of every image, the annotations
file's bytes, the decode size and the cache format, so an image replaced under the same name is decoded again,
also one of the same size whose modification time was kept (``cp -p``, ``rsync -a``); hashing reads every
image at each start (about a second per few hundred MB), far less than decoding them. For an archive: the
BLAKE2b of the archive's bytes (everything in it follows from them), the decode size and the cache format.
The cache is written atomically; a damaged cache file is an error that names it, and a cache that cannot be
written (read-only or full disk) only costs a warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import UserError, one_line
from ..fileio import LONG_TEXT_LIMIT, atomic_torch_save, open_regular, read_small_file
from .archive import archive_tree, decode_archive, is_archive
from .decode import decode_image, pillow, progress
from .sources import decode_cache_disabled, user_cache
from .tree import ANNOTATIONS, WORDS, Samples, Tree, class_names, list_samples

CACHE_FORMAT = 4  # bump when the cached content or its key changes
CACHE_KEYS = ("train_x", "train_y", "val_x", "val_y")


class ImageTree(NamedTuple):
    """A decoded image tree: train and validation images and labels, the number of classes, their names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]


def folder_tree(root: Path) -> Tree:
    """The folders and files below ``root``; symbolic links to folders are followed, a loop is refused."""
    dirs: set[str] = set()
    files: list[str] = []

    def walk(folder: Path, rel: str, ancestors: frozenset[Path]) -> None:
        for entry in folder.iterdir():
            path = f"{rel}{entry.name}"
            if entry.is_dir():
                real = entry.resolve()
                if real in ancestors:
                    raise UserError(f"image folder {root}: {entry} links back to a folder above it (a loop)")
                dirs.add(path)
                walk(entry, f"{path}/", ancestors | {real})
            elif entry.is_file():
                files.append(path)

    if not root.is_dir():
        raise UserError(f"image folder {root} is not a folder (nor a .tar/.tar.gz/.tgz archive of one)")
    walk(root, "", frozenset({root.resolve()}))

    def read_text(rel: str) -> bytes | None:
        path = root / rel
        return read_small_file(path, str(path), LONG_TEXT_LIMIT) if path.is_file() else None
    return Tree(str(root), frozenset(dirs), tuple(sorted(files)), read_text)


def _decode_folder(root: Path, samples: Samples, size: int, what: str) -> torch.Tensor:
    image_module = pillow()
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    with progress(len(samples), what) as bar:
        for i, (rel, _) in enumerate(samples):
            path = root / rel
            with open_regular(path, f"image {path}") as handle:  # one listed in val_annotations.txt may be a FIFO
                images[i] = decode_image(image_module, handle, size, str(path))
            bar.update()
    return images


def _labels(samples: Samples) -> torch.Tensor:
    return torch.tensor([label for _, label in samples], dtype=torch.int64)


def _file_digest(path: Path, what: str) -> bytes:
    try:
        with open_regular(path, f"{what} {path}") as handle:  # a FIFO listed as an image would block
            return hashlib.file_digest(handle, "blake2b").digest()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({one_line(exc.strerror or exc)})") from None


def _cache_file(path: Path, size: int, key: hashlib._Hash) -> Path:
    """Where the decoded tensors of ``path`` at ``size`` are cached."""
    return user_cache() / "decoded" / f"{path.name}-{size}-{key.hexdigest()[:16]}.pt"


def _key(size: int) -> hashlib._Hash:
    return hashlib.sha256(f"selfdistill decoded images, format {CACHE_FORMAT}, size {size}".encode())


def _folder_key(root: Path, tree: Tree, size: int, train: Samples, val: Samples) -> hashlib._Hash:
    """A digest of everything the decoded folder depends on (see the module docstring)."""
    digest = _key(size)
    for split, samples in (("train", train), ("val", val)):
        digest.update(f"\0{split}".encode())
        for rel, label in samples:
            content = _file_digest(root / rel, "image")
            digest.update(b"\0" + os.fsencode(rel) + f"\0{label}\0".encode() + content)
    for name in (ANNOTATIONS, WORDS):
        text = tree.read_text(name)
        if text is not None:
            digest.update(f"\0{name}\0".encode() + hashlib.blake2b(text).digest())
    return digest


def _load_cache(cache: Path, size: int, expected: tuple[Samples, Samples] | None) -> ImageTree | None:
    """The cached tree, None if there is no cache file; a cache that does not hold exactly the expected
    tensors (the ``expected`` samples' labels, when given) is an error naming it (loaded with ``weights_only``,
    so it cannot run code)."""
    try:
        saved = torch.load(cache, weights_only=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception:  # torch.load fails with many classes on a truncated or foreign file
        saved = None
    if not (isinstance(saved, dict) and set(saved) == {*CACHE_KEYS, "class_names"} and _valid(saved, size, expected)):
        raise UserError(f"decoded-image cache {cache} is corrupt; delete it and the images will be decoded again")
    return ImageTree(*(saved[k] for k in CACHE_KEYS), len(saved["class_names"]), tuple(saved["class_names"]))


def _valid(saved: dict, size: int, expected: tuple[Samples, Samples] | None) -> bool:
    names = saved["class_names"]
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
            and all(isinstance(saved[k], torch.Tensor) for k in CACHE_KEYS)):
        return False
    for x, y in (("train_x", "train_y"), ("val_x", "val_y")):
        images, labels = saved[x], saved[y]
        if not (images.dtype == torch.uint8 and images.shape[1:] == (3, size, size) and labels.dtype == torch.int64
                and labels.shape == (len(images),) and len(labels) > 0
                and 0 <= int(labels.min()) and int(labels.max()) < len(names)):
            return False
    return expected is None or all(torch.equal(saved[k], _labels(s)) for k, s in zip(("train_y", "val_y"), expected))


def _save_cache(cache: Path, tree: ImageTree) -> None:
    """Write the cache atomically; if that fails, warn on one line and go on without it."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(cache, {**dict(zip(CACHE_KEYS, tree[:4])), "class_names": list(tree.class_names)})
    except OSError as exc:
        print(f"warning: cannot write the decoded-image cache {cache} ({one_line(exc.strerror or exc)}); "
              "continuing without it", file=sys.stderr, flush=True)


def read_image_tree(path: Path, size: int) -> ImageTree:
    """The images of the folder or archive at ``path`` decoded at ``size`` x ``size``, with their classes."""
    path = Path(path)
    try:
        if is_archive(path) and path.is_file():
            return _read_archive(path, size)
        tree = folder_tree(path)
        classes, train, val = list_samples(tree)
        cache = None if decode_cache_disabled() else _cache_file(path, size, _folder_key(path, tree, size, train, val))
    except OSError as exc:
        raise UserError(f"image folder {path} cannot be read ({one_line(exc)})") from None
    cached = _load_cache(cache, size, (train, val)) if cache is not None else None
    if cached is not None:
        return cached
    result = ImageTree(_decode_folder(path, train, size, "train"), _labels(train),
                       _decode_folder(path, val, size, "val"), _labels(val), len(classes), class_names(tree, classes))
    if cache is not None:
        _save_cache(cache, result)
    return result


def _read_archive(path: Path, size: int) -> ImageTree:
    """An archive's tree: from the cache, keyed by the archive's bytes, without listing the archive (listing
    costs a pass over it, some seconds for 100,000 members); else listed and decoded in two passes."""
    cache = None if decode_cache_disabled() else _cache_file(path, size, _archive_key(path, size))
    cached = _load_cache(cache, size, None) if cache is not None else None
    if cached is not None:
        return cached
    tree, prefix = archive_tree(path)
    classes, train, val = list_samples(tree)
    both = decode_archive(path, prefix, train + val, size, "images")
    result = ImageTree(both[:len(train)], _labels(train), both[len(train):], _labels(val), len(classes),
                       class_names(tree, classes))
    if cache is not None:
        _save_cache(cache, result)
    return result


def _archive_key(path: Path, size: int) -> hashlib._Hash:
    digest = _key(size)
    digest.update(b"\0archive\0" + _file_digest(path, "archive"))
    return digest


def read_image_folder(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Train images, train labels, validation images, validation labels and the number of classes."""
    return read_image_tree(path, size)[:5]
