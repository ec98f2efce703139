"""The samples of an image tree, from its listing alone, whether the tree is a folder or an archive.

Two layouts are understood, both with one folder per class under ``train/``:

* Tiny-ImageNet: ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt`` (file name, tab, class folder name);
* generic (ImageNet-style): ``train/<class>/**/*`` and ``val/<class>/**/*`` (or ``test/<class>/**/*``); images
  in folders nested inside a class folder belong to that class.

The classes are the folders under ``train/``, numbered in sorted order. A class folder without images, and a
class folder in ``val/`` (``test/``) that ``train/`` lacks, are refused: the first would be a class the network
never sees, the second test images of a class it cannot predict. Files that are not images by their extension
(``.DS_Store``, ``*_boxes.txt``, ...) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError

EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
ANNOTATIONS = "val/val_annotations.txt"
WORDS = "words.txt"
Samples = list[tuple[str, int]]  # (path relative to the tree's root, label)


@dataclass(frozen=True)
class Tree:
    """What is in an image tree: its folders and regular files as relative POSIX paths ('' is the root)."""

    label: str  # how messages name the tree: its folder, or its archive
    dirs: frozenset[str]
    files: tuple[str, ...]  # sorted
    read_text: Callable[[str], bytes | None] = field(compare=False)  # a small text file's bytes, None if absent
    separator: str = "/"  # between the label and a relative path in messages ("/" folder, ":" archive)

    def where(self, rel: str) -> str:
        """How a message names the file or folder ``rel``."""
        return f"{self.label}{self.separator}{rel}" if rel else self.label

    def subfolders(self, rel: str) -> list[str]:
        """The names of the folders directly inside ``rel``, sorted."""
        prefix = f"{rel}/"
        return sorted(d[len(prefix):] for d in self.dirs if d.startswith(prefix) and "/" not in d[len(prefix):])

    def images_by_folder(self, split: str) -> dict[str, list[str]]:
        """The images anywhere below each folder directly inside ``split``, sorted, by that folder's name."""
        found: dict[str, list[str]] = {}
        for path in self.files:
            parts = path.split("/", 2)
            if len(parts) == 3 and parts[0] == split and is_image(path):
                found.setdefault(parts[1], []).append(path)
        return found


def is_image(name: str) -> bool:
    dot = name.rfind(".")
    return dot > name.rfind("/") and name[dot:].lower() in EXTENSIONS


def list_samples(tree: Tree) -> tuple[list[str], Samples, Samples]:
    """Class folder names (in label order) and the (path, label) pairs of the train and validation splits."""
    if "train" not in tree.dirs:
        raise UserError(f"image folder {tree.label} has no train/ directory (expected train/<class>/ and val/<class>/ "
                        "or test/<class>/)")
    classes = tree.subfolders("train")
    if len(classes) < 2:
        raise UserError(f"image folder {tree.where('train')} needs at least two class folders, found {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    images = tree.images_by_folder("train")
    train = [(p, index[c]) for c in classes for p in images.get(c, [])]
    empty = [c for c in classes if c not in images]
    if empty:
        raise UserError(f"image folder {tree.label}: class folder train/{empty[0]} holds no images"
                        f"{f' (nor do {len(empty) - 1} more)' if len(empty) > 1 else ''}; add images or remove it")
    annotations = tree.read_text(ANNOTATIONS)
    if annotations is not None:
        val = _annotated(tree, annotations, index)
    else:
        split = next((n for n in ("val", "test") if n in tree.dirs), None)
        if split is None:
            raise UserError(f"image folder {tree.label} has neither val/ nor test/")
        unknown = [d for d in tree.subfolders(split) if d not in index]
        if unknown:
            raise UserError(f"{tree.where(split)} has class folders that train/ lacks: {', '.join(unknown[:5])}; a "
                            "network cannot predict a class it was not trained on (add it to train/ or remove it)")
        images = tree.images_by_folder(split)
        val = [(p, index[d]) for d in tree.subfolders(split) for p in images.get(d, [])]
    if not val:
        raise UserError(f"image folder {tree.label}: no images found in val/ (test/)")
    return classes, train, val


def _annotated(tree: Tree, raw: bytes, index: dict[str, int]) -> Samples:
    """The validation samples listed in ``val_annotations.txt``: plain file names in ``val/images/`` only,
    so that no line can make the reader open a file outside the dataset's tree."""
    where = tree.where(ANNOTATIONS)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text (lines: file name, tab, class folder name)") from None
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"{where}, line {number}: cannot read {line[:60]!r} (unknown class?)")
        name = parts[0]
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise UserError(f"{where}, line {number}: {name[:60]!r} is not a plain file name; only names of "
                            f"files in {tree.where('val/images')} are allowed")
        samples.append((f"val/images/{name}", index[parts[1]]))
    return samples


def class_names(tree: Tree, classes: list[str]) -> tuple[str, ...]:
    """The class folders in label order, each named by the first words of its line in the tree's
    ``words.txt`` (``n01443537<TAB>goldfish, Carassius auratus``) when that file has it; a name two classes
    share, or a ``words.txt`` that cannot be read, keeps the folder name."""
    try:
        words = _words(tree.read_text(WORDS))
    except UserError:  # e.g. a words.txt too large to be one
        words = {}
    names = [words.get(folder, folder) for folder in classes]
    return tuple(name if names.count(name) == 1 else folder for name, folder in zip(names, classes))


def _words(raw: bytes | None) -> dict[str, str]:
    """WordNet id -> its first name, from ImageNet's ``words.txt`` (empty where it is missing or unreadable)."""
    try:
        text = raw.decode("utf-8") if raw is not None else ""
    except UnicodeDecodeError:
        return {}
    pairs = (line.split("\t", 1) for line in text.splitlines())
    return {p[0]: p[1].split(",")[0].strip() for p in pairs if len(p) == 2 and p[1].split(",")[0].strip()}
