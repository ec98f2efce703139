"""CS-KD: Regularizing Class-wise Predictions via Self-knowledge Distillation (Yun et al., CVPR 2020).

Every anchor image is paired with another training image of the same class, drawn uniformly from the
whole class (the anchor itself included, as in the official ``PairBatchSampler``); the network's
prediction on the partner, at temperature T, teaches its prediction on the anchor:

    L = CE(z_anchor, y) + lambda * T^2 * KL(softmax(z_partner / T) || softmax(z_anchor / T))   (batchmean)

As in the official code the partners go through their own forward, in train mode (their batch-norm
statistics are those of the partner half) but without gradient; they get no hard-label loss, and
train accuracy counts anchors only. Anchors are a shuffled pass over the (rank's share of the) data
in batches of B, so an epoch takes ceil(N / B) steps and forwards 2N images. T = 4, lambda = 1
(the paper uses lambda = 3 for fine-grained data). Not combinable with mixup/CutMix: the class-wise
pairing is the point of the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import train_batches
from ..errors import require
from ..losses import kd_kl
from .base import Batch, Method, Outputs

PARTNER = "cskd_partner"


@dataclass
class CSKDOptions:
    temperature: float = 4.0
    lam: float = 1.0

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.lam >= 0, "method.lam", self.lam, "a number >= 0")


def same_class_partners(anchors: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each anchor index, a uniformly drawn index of the same class (possibly itself)."""
    order = torch.argsort(labels, stable=True)  # indices grouped by class
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    y = labels[anchors]
    offset = (torch.rand(len(anchors), generator=generator) * counts[y]).long()
    return order[starts[y] + offset]


class CSKD(Method):
    name = "cs_kd"
    summary = "class-wise self-KD: a same-class partner's prediction teaches each sample (CVPR 2020)"
    Options = CSKDOptions
    term_names = ("cskd_kl",)
    supports_mixing = False
    min_batch_size = 2

    def batches(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool,
                rank: int, world_size: int) -> list[torch.Tensor]:
        anchors = train_batches(len(labels), batch_size, generator, drop_last, rank, world_size)
        return [torch.cat([a, same_class_partners(a, labels, generator)]) for a in anchors]

    def extend(self, batch: Batch) -> Batch:
        new = batch.parts["new"]
        half = (new.stop - new.start) // 2
        return batch.split("new", ("new", PARTNER), half, own_forward=True, grad=False, supervised=False)

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        anchor, partner = out.logits[batch.parts["new"]], out.logits[batch.parts[PARTNER]]
        return {"cskd_kl": self.options.lam * kd_kl(anchor, partner, self.options.temperature)}
