"""BAKE: Self-distillation with Batch Knowledge Ensembling (Ge et al., arXiv 2104.13298).

Soft targets are an ensemble of the predictions of *other* samples in the same batch, weighted by
feature similarity and propagated to convergence:

    F = L2-normalised penultimate features (detached)
    A = row-softmax(F F^T - 1e9 I)                      (cosine affinities, self excluded)
    Q = (1 - omega) (I - omega A)^-1 softmax(z / T)      (detached)
    L = CE + lambda * T^2 * KL(Q || softmax(z / T))      (batchmean, over every image of the batch)

Batches come from BAKE's same-class sampler (the official ``IdentityBatchSampler``): B / (M + 1)
anchors per batch from a shuffled pass over the data, each with M other images of its class (drawn
without replacement, the anchor excluded), so the batch holds same-class groups whose predictions
can ensemble. Every image is an anchor once per epoch: an epoch takes ceil(N / (B / (M + 1))) steps
and forwards about (M + 1) N images. Defaults T = 4, lambda = 1, omega = 0.5, M = 3 (CIFAR-100;
the paper uses M = 1, omega = 0.9 on Tiny-ImageNet). The linear system is solved in float32 as in
the official code. Under DDP each rank ensembles its own batch (the ImageNet code all-gathers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import train_batches
from ..errors import UserError, require
from ..losses import kl_to_target
from .base import Batch, Method, Outputs, SetupContext

FEATURE = "fc:input"


@dataclass
class BAKEOptions:
    temperature: float = 4.0
    lam: float = 1.0
    omega: float = 0.5
    extra_per_anchor: int = 3

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.lam >= 0, "method.lam", self.lam, "a number >= 0")
        require(0 <= self.omega < 1, "method.omega", self.omega, "a number in [0, 1)")
        require(self.extra_per_anchor >= 1, "method.extra_per_anchor", self.extra_per_anchor, "an integer >= 1")


def same_class_extras(anchors: torch.Tensor, labels: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """(len(anchors), m) indices of other images of each anchor's class, distinct per anchor when the
    class has at least m other members (drawn by rejection), else drawn with replacement."""
    order = torch.argsort(labels, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    y = labels[anchors]
    others = (counts[y] - 1).clamp_min(1)
    own = position[anchors] - starts[y]  # the anchor's place within its class

    def draw() -> torch.Tensor:
        offset = (torch.rand(len(anchors), m, generator=generator) * others[:, None]).long()
        return offset + (offset >= own[:, None]).long()  # skip the anchor itself

    offsets = draw()
    distinct_possible = (counts[y] - 1) >= m
    for _ in range(50):
        clash = torch.zeros(len(anchors), dtype=torch.bool)
        for i in range(m):
            for j in range(i):
                clash |= offsets[:, i] == offsets[:, j]
        clash &= distinct_possible
        if not clash.any():
            break
        offsets[clash] = draw()[clash]
    offsets = torch.minimum(offsets, counts[y][:, None] - 1)  # classes of one image: the anchor itself
    return order[starts[y][:, None] + offsets]


class BAKE(Method):
    name = "bake"
    summary = "batch knowledge ensembling: similar samples' predictions in the batch form the target (2021)"
    Options = BAKEOptions
    term_names = ("bake_kl",)
    min_batch_size = 2

    def setup(self, ctx: SetupContext) -> None:
        if not isinstance(getattr(ctx.model, "fc", None), torch.nn.Linear):
            raise UserError(f"method.name=bake: {ctx.model_name} has no linear classifier fc whose input could serve "
                            "as the penultimate feature")

    @property
    def taps(self) -> tuple[str, ...]:
        return (FEATURE,)

    def batches(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool,
                rank: int, world_size: int) -> list[torch.Tensor]:
        m = self.options.extra_per_anchor
        anchors_per_batch = batch_size // (m + 1)
        if anchors_per_batch < 1:
            raise UserError(f"data.batch_size={batch_size * world_size} is too small for BAKE with "
                            f"method.extra_per_anchor={m}; allowed: at least {(m + 1) * world_size}")
        out = []
        # a last batch of one anchor still forwards M + 1 images, enough for batch normalisation
        for anchors in train_batches(len(labels), anchors_per_batch, generator, drop_last, rank, world_size,
                                     min_last=1):
            extras = same_class_extras(anchors, labels, m, generator)
            out.append(torch.cat([anchors, extras.flatten()]))
        return out

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        rows = batch.supervised_rows()
        logits = out.logits[rows].float()
        t = self.options.temperature
        with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):  # affinities in float32
            features = F.normalize(out.features[FEATURE][rows].float(), dim=1)
            n = len(features)
            eye = torch.eye(n, device=features.device)
            affinity = torch.softmax(features @ features.T - 1e9 * eye, dim=1)
            probs = torch.softmax(logits / t, dim=1)
            ensemble = (1 - self.options.omega) * torch.linalg.solve(eye - self.options.omega * affinity, probs)
        kl = kl_to_target(logits, ensemble, t)
        return {"bake_kl": self.options.lam * kl}
