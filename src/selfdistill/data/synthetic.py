"""A small learnable stand-in dataset for tests: one smooth random prototype per class plus noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SyntheticConfig


def make_synthetic(cfg: SyntheticConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test images (uint8) and labels, the same for the same shape whatever the run seed."""
    gen = torch.Generator().manual_seed(1234)
    coarse = torch.rand(cfg.num_classes, cfg.channels, 4, 4, generator=gen)
    prototypes = F.interpolate(coarse, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False) * 255

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % cfg.num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, cfg.channels, cfg.size, cfg.size, generator=gen) * 48
        images = (prototypes[labels] + noise).clamp(0, 255).round().to(torch.uint8)
        return images, labels

    train_x, train_y = split(cfg.train_size)
    test_x, test_y = split(cfg.test_size)
    return train_x, train_y, test_x, test_y
