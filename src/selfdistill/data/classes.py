"""Class names, for per-class results (``selfdistill eval``): fixed lists for Fashion-MNIST and CIFAR-10, the
class folders of an image-folder dataset (Tiny-ImageNet's WordNet ids named by its ``words.txt``); None for
a dataset whose classes have only their numbers (MNIST's digits, CIFAR-100, synthetic data)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..fileio import LONG_TEXT_LIMIT, read_small_file

# the datasets' own label order (Fashion-MNIST's README; CIFAR-10's batches.meta)
FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def folder_class_names(root: Path) -> tuple[str, ...]:
    """The class folders under ``root/train`` in label order (sorted, as the reader numbers them), each named
    by the first words of its line in ``root/words.txt`` (``n01443537<TAB>goldfish, Carassius auratus``)
    when that file has it; a name two classes share, or a ``words.txt`` that cannot be read, keeps the folder
    name."""
    folders = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    words = _words(root / "words.txt")
    names = [words.get(folder, folder) for folder in folders]
    return tuple(name if names.count(name) == 1 else folder for name, folder in zip(names, folders))


def _words(path: Path) -> dict[str, str]:
    """WordNet id -> its first name, from ImageNet's ``words.txt`` (empty where it is missing or unreadable)."""
    if not path.is_file():
        return {}
    try:
        text = read_small_file(path, str(path), LONG_TEXT_LIMIT).decode("utf-8")
    except (UserError, UnicodeDecodeError):
        return {}
    pairs = (line.split("\t", 1) for line in text.splitlines())
    return {p[0]: p[1].split(",")[0].strip() for p in pairs if len(p) == 2 and p[1].split(",")[0].strip()}
