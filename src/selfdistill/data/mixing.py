"""Mixup and CutMix, batched and on the device, described per row so that a row can be re-made.

Every row i of a mixed batch is ``lam_i`` of its own (augmented) image and ``1 - lam_i`` of a partner
image: mixup blends the two (Zhang et al., 2018); CutMix pastes the partner into a box and sets
``lam_i`` to the area left to the row's own image (Yun et al., 2019). The soft target is
``lam_i * onehot(y_i) + (1 - lam_i) * onehot(y_partner_i)``. Partners are a random permutation of
the loader's batch, and lam ~ Beta(alpha, alpha), one draw (and one box) per batch as in both papers;
a batch is mixed with probability ``prob``.

Keeping the partner image and the mixing per row (instead of a permutation) is what lets DLB replay
the *same* mixed image one step later (see ``methods/dlb.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Mix:
    """Per-row mixing: partner uint8 images and labels, lam per row, CutMix boxes (top, left,
    bottom, right) per row or None for mixup."""

    partner_images: torch.Tensor
    partner_labels: torch.Tensor
    lam: torch.Tensor
    boxes: torch.Tensor | None = None

    @classmethod
    def identity(cls, images: torch.Tensor, labels: torch.Tensor, cutmix: bool) -> Mix:
        """Rows that stay unmixed (lam 1, an empty box)."""
        lam = torch.ones(len(labels), device=labels.device)
        boxes = torch.zeros(len(labels), 4, dtype=torch.long, device=labels.device) if cutmix else None
        return cls(images, labels, lam, boxes)

    def rows(self, rows: slice) -> Mix:
        return Mix(self.partner_images[rows], self.partner_labels[rows], self.lam[rows],
                   None if self.boxes is None else self.boxes[rows])

    def cat(self, other: Mix) -> Mix:
        boxes = None if self.boxes is None else torch.cat([self.boxes, other.boxes])
        return Mix(torch.cat([self.partner_images, other.partner_images]),
                   torch.cat([self.partner_labels, other.partner_labels]), torch.cat([self.lam, other.lam]), boxes)


class Mixer:
    """Draws the mixing of a fresh batch, and applies any per-row mixing to augmented images."""

    def __init__(self, kind: str, alpha: float, prob: float, image_size: int) -> None:
        if kind not in ("mixup", "cutmix"):
            raise ValueError(f"unknown mixing {kind!r}")
        self.cutmix, self.alpha, self.prob, self.size = kind == "cutmix", alpha, prob, image_size

    def draw(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> Mix:
        """The mixing of a batch fresh from the loader (uses ``generator`` and torch's global RNG)."""
        n, dev = len(labels), labels.device
        if float(torch.rand((), generator=generator, device=dev)) >= self.prob:
            return Mix.identity(images, labels, self.cutmix)
        perm = torch.randperm(n, generator=generator, device=dev)
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        boxes = None
        if self.cutmix:
            side = self.size
            cut = math.sqrt(1.0 - lam)
            h = w = int(side * cut)
            cy, cx = (int(v) for v in torch.randint(0, side, (2,), generator=generator, device=dev))
            top, bottom = max(cy - h // 2, 0), min(cy + h // 2, side)
            left, right = max(cx - w // 2, 0), min(cx + w // 2, side)
            lam = 1.0 - (bottom - top) * (right - left) / (side * side)  # the area actually kept
            boxes = torch.tensor([[top, left, bottom, right]], device=dev).expand(n, 4)
        return Mix(images[perm], labels[perm], torch.full((n,), lam, device=dev), boxes)


def apply_mix(inputs: torch.Tensor, partner_inputs: torch.Tensor, mix: Mix) -> torch.Tensor:
    """Mix augmented float images with their augmented partners, row by row."""
    if mix.boxes is None:
        lam = mix.lam.to(inputs.dtype)[:, None, None, None]
        return lam * inputs + (1 - lam) * partner_inputs
    h, w = inputs.shape[-2:]
    rows = torch.arange(h, device=inputs.device)[None, :, None]
    cols = torch.arange(w, device=inputs.device)[None, None, :]
    top, left, bottom, right = (mix.boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return torch.where(inside[:, None], partner_inputs, inputs)
