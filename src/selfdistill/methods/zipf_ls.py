"""Zipf's label smoothing (Liang et al., ECCV 2022, "Efficient One Pass Self-distillation with Zipf's
Label Smoothing").

The network's own dense predictions rank the classes, and the non-target classes are pulled towards
a Zipf distribution over that ranking:

1. the classifier is applied at every location of the last feature map (bilinearly upsampled x2),
   and each location votes for its arg-max class;
2. classes are ranked by votes, most first, ties sharing the smallest rank (every unvoted class
   gets the same rank); the target class is ranked with the others;
3. q_c is proportional to rank_c ** -power over the classes other than the target, renormalised;
4. L = CE + lambda * mean over samples of KL(q || softmax over the non-target logits).

As in the official code (megvii-research/zipfls): votes alone decide the ranking (the pooled
prediction does not), q carries no gradient, power = 1, and lambda = 0.1 (their CIFAR-100 and
ImageNet setting; 1.0 on Tiny-ImageNet); the official ImageNet runs do not upsample
(``method.upsample: false``). The official ranking runs on the CPU with SciPy; ours is a
batched tie-aware rank on the device. The dense logits reuse the model's own classifier (``fc``,
after ``classifier`` for VGG) on the input of its global average pooling. With mixup/CutMix every
class with target mass is left out of the non-target set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, require
from .base import Batch, Method, Outputs, SetupContext


@dataclass
class ZipfOptions:
    lam: float = 0.1
    power: float = 1.0
    upsample: bool = True

    def check(self) -> None:
        require(self.lam >= 0, "method.lam", self.lam, "a number >= 0")
        require(self.power > 0, "method.power", self.power, "a number > 0")


def min_rank(votes: torch.Tensor) -> torch.Tensor:
    """Rank of each class by votes (most votes = 1), ties taking the smallest rank ('min'):
    1 + the number of classes with strictly more votes, found by binary search in sorted votes."""
    ascending = votes.sort(dim=1).values.contiguous()
    return 1 + votes.shape[1] - torch.searchsorted(ascending, votes.contiguous(), right=True)


def zipf_targets(votes: torch.Tensor, exclude: torch.Tensor, power: float) -> torch.Tensor:
    """rank ** -power over the classes not in ``exclude`` (a boolean mask), renormalised per row
    (a row with every class excluded gets all zeros)."""
    weights = min_rank(votes).float() ** -power
    weights = weights.masked_fill(exclude, 0.0)
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-12)


class ZipfLS(Method):
    name = "zipf_ls"
    summary = "Zipf's label smoothing: own dense votes rank the classes, non-targets follow 1/rank (ECCV 2022)"
    Options = ZipfOptions
    term_names = ("zipf_kl",)

    def setup(self, ctx: SetupContext) -> None:
        pools = [name for name, m in ctx.model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
        fc = getattr(ctx.model, "fc", None)
        if not pools or not isinstance(fc, nn.Linear):
            raise UserError(f"method.name=zipf_ls: {ctx.model_name} has no global-average-pooled feature map with a "
                            "linear classifier fc; use a convolutional model (cnn, resnet*, vgg*, wrn*, densenet*)")
        self.tap = f"{pools[-1]}:input"
        self.head = [m for m in (getattr(ctx.model, "classifier", None), fc) if m is not None]

    @property
    def taps(self) -> tuple[str, ...]:
        return (self.tap,)

    def dense_votes(self, fmap: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-class counts of the arg-max class at every location of the (upsampled) feature map."""
        with torch.no_grad():
            if self.options.upsample:
                fmap = F.interpolate(fmap, scale_factor=2, mode="bilinear", align_corners=False)
            dense = fmap.permute(0, 2, 3, 1)
            for layer in self.head:
                dense = layer(dense)
            winners = dense.argmax(-1).flatten(1)
            votes = torch.zeros(len(winners), num_classes, dtype=torch.long, device=winners.device)
            return votes.scatter_add_(1, winners, torch.ones_like(winners))

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        rows = batch.supervised_rows()
        logits = out.logits[rows].float()
        k = logits.shape[1]
        exclude = batch.targets(k)[rows] > 0
        q = zipf_targets(self.dense_votes(out.features[self.tap][rows], k), exclude, self.options.power)
        log_p = F.log_softmax(logits.masked_fill(exclude, float("-inf")), dim=1).masked_fill(exclude, 0.0)
        kl = (torch.xlogy(q, q) - q * log_p).sum(1).mean()
        return {"zipf_kl": self.options.lam * kl}
