"""DIST: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022).

Exact agreement with a much stronger teacher is hard to reach and not needed; DIST asks the student
to preserve the teacher's *relations* instead, by Pearson correlation of the softened predictions,
both per sample across classes (inter-class) and per class across the batch (intra-class; formulas in
``losses/dist.py``):

    L = ce_weight * CE(z_s, y) + T^2 * (beta * L_inter + gamma * L_intra)

Defaults are the official CIFAR-100 setting (hunto/DIST_KD, ``dist_t4`` with ``kd_loss_weight = 2``):
T = 4 and DIST's own beta = gamma = 1 times the loss weight 2, written here as beta = gamma = 2;
ce_weight = 1. The ImageNet configs use T = 1. The intra-class
relation is a statistic of the batch, so DIST needs at least 2 rows.

The cross-entropy covers the supervised rows (against the mixed targets under mixup/CutMix); the
relations cover every row the teacher saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import require
from ..losses import cross_entropy, dist_parts
from .base import Batch, Method, Outputs


@dataclass
class DISTOptions:
    temperature: float = 4.0
    beta: float = 2.0
    gamma: float = 2.0
    ce_weight: float = 1.0

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.beta >= 0, "method.beta", self.beta, "a number >= 0")
        require(self.gamma >= 0, "method.gamma", self.gamma, "a number >= 0")
        require(self.ce_weight >= 0, "method.ce_weight", self.ce_weight, "a number >= 0")


class DIST(Method):
    name = "dist"
    summary = "DIST: keep the teacher's inter- and intra-class relations by Pearson correlation (NeurIPS 2022)"
    Options = DISTOptions
    term_names = ("dist_ce", "dist_inter", "dist_intra")
    provides_task_loss = True
    min_batch_size = 2
    teachers_needed = (1, 1)

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        inter, intra = dist_parts(out.logits, out.teachers[0].logits, o.temperature)
        ce = cross_entropy(out.logits[rows], batch.loss_targets(out.logits.shape[1])[rows])
        return {"dist_ce": o.ce_weight * ce, "dist_inter": o.beta * inter, "dist_intra": o.gamma * intra}
