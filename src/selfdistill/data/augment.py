"""Batched image augmentation on the training device: no per-sample Python, no torchvision.

:class:`Augment` turns a batch of uint8 images (B, C, H, W) into normalised float images:
optional zero padding to a fixed size (``pad_to``, e.g. Fashion-MNIST 28 -> 32), then, for training,
a random crop after zero padding (or a random resized crop) and a random horizontal flip, each drawn
independently per image from the generator passed in. Padding uses 0 on the uint8 scale, as
torchvision's ``RandomCrop(padding=p)`` does before ``ToTensor``/``Normalize``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (centred) up to ``size`` x ``size``; images already that large are returned as is."""
    h, w = images.shape[-2:]
    if h >= size and w >= size:
        return images
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop of the original size from the image zero-padded by ``padding``."""
    if padding == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # B, H, 1
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # B, 1, W
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # gathered as B, H, W, C


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image crop of random area fraction and aspect ratio, resized back to the input size.

    Like torchvision's ``RandomResizedCrop`` except that a crop that would not fit is clamped to the
    image instead of retried up to ten times. Works on float images (bilinear sampling).
    """
    b = images.shape[0]
    dev = images.device
    area = torch.empty(b, device=dev).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the image side
    height = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=dev, generator=generator) * 2 - 1) * (1 - width)
    cy = (torch.rand(b, device=dev, generator=generator) * 2 - 1) * (1 - height)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, cx, height, cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Augment:
    """Normalisation plus the training augmentations, applied to whole batches on their device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0, flip: bool = False,
                 resized_crop: bool = False, pad_to: int | None = None) -> None:
        self.crop_padding, self.flip, self.resized_crop, self.pad_to = crop_padding, flip, resized_crop, pad_to
        std_t = torch.tensor(std, dtype=torch.float32)
        # x_norm = (x / 255 - mean) / std  ==  x * scale - shift
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self._shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if self._scale.device != images.device:
            self._scale, self._shift = self._scale.to(images.device), self._shift.to(images.device)
        return images.float() * self._scale - self._shift

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time transform: padding to ``pad_to`` and normalisation only."""
        if self.pad_to:
            images = pad_images(images, self.pad_to)
        return self.normalize(images)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training transform of a uint8 batch; the randomness comes from ``generator`` only."""
        if self.pad_to:
            images = pad_images(images, self.pad_to)
        if not self.resized_crop:
            images = random_crop(images, self.crop_padding, generator)
        if self.flip:
            images = random_flip(images, generator)
        images = self.normalize(images)
        if self.resized_crop:
            images = random_resized_crop(images, generator)
        return images
