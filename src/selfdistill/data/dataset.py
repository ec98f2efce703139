"""The in-memory dataset every run trains on: uint8 images and int64 labels, train and test."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class AugmentDefaults:
    """A dataset's standard training augmentation."""

    crop_padding: int = 0
    flip: bool = False
    resized_crop: bool = False


@dataclass(frozen=True)
class ImageDataset:
    """Images as (N, C, H, W) uint8 tensors, labels as int64, held wherever ``to`` put them.

    ``clean_train_labels`` is set when label noise was applied, so analyses can tell which training
    labels are wrong; training only ever sees ``train_labels``.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentDefaults = AugmentDefaults()
    clean_train_labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None  # one per class, in label order; None: only their numbers

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def to(self, device: torch.device | str) -> ImageDataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, train_images=move(self.train_images), train_labels=move(self.train_labels),
                       test_images=move(self.test_images), test_labels=move(self.test_labels),
                       clean_train_labels=move(self.clean_train_labels))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())
