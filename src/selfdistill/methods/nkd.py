"""NKD: Normalized KD (Yang et al., "Rethinking Knowledge Distillation via Cross-Entropy", arXiv
2208.10139), the version with a teacher; ``tf_nkd`` is its teacher-free variant.

Written as a cross-entropy, KD's target part weights log S_t by the teacher's T_t, and the
non-target part is distilled as a normalised distribution (formulas in ``losses/nkd.py``):

    L = ce_weight * CE(z_s, y) + L_target + gamma * L_non_target(tau)

The target term always uses temperature 1; tau applies to the non-target term, with tau^2. Defaults
are the CIFAR-100 setting of the official repository (yzd-v/cls_KD, resnet34 -> resnet18):
tau = 3, gamma = 3.5; its ImageNet setting is tau = 1, gamma = 1.5. The CE at weight 1 is the mmcls
head's loss, which the official distiller keeps.

With soft labels the official code takes the argmax of the mixed label as the target class, which
under mixup/CutMix is the partner's class whenever lam < 0.5; we refuse mixing instead. The split
needs each row's label, so NKD covers the supervised rows only. One stored version of the official
loss (commit 1c2c0ff) scatters 1 instead of 0 into its non-target mask, which leaves the target in
the "non-target" distribution; we follow the paper and the other versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import require
from ..losses import cross_entropy, nkd_parts
from .base import Batch, Method, Outputs


@dataclass
class NKDOptions:
    temperature: float = 3.0
    gamma: float = 3.5
    ce_weight: float = 1.0

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.gamma >= 0, "method.gamma", self.gamma, "a number >= 0")
        require(self.ce_weight >= 0, "method.ce_weight", self.ce_weight, "a number >= 0")


class NKD(Method):
    name = "nkd"
    summary = "Normalized KD: teacher-weighted target term plus normalised non-target distillation (2022)"
    Options = NKDOptions
    term_names = ("nkd_ce", "nkd_target", "nkd_non_target")
    provides_task_loss = True
    supports_mixing = False
    teachers_needed = (1, 1)

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        student, labels = out.logits[rows], batch.labels[rows]
        target, non_target = nkd_parts(student, out.teachers[0].logits[rows], labels, o.temperature)
        return {"nkd_ce": o.ce_weight * cross_entropy(student, labels), "nkd_target": target,
                "nkd_non_target": o.gamma * non_target}
