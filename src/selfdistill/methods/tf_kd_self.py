"""Tf-KD_self: the network trained normally, frozen, teaches a fresh copy of itself (Yuan et al.,
CVPR 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization").

    L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * kl_weight * KL(softmax(z_t / T) || softmax(z_s / T))

The teacher is the network itself trained normally: a finished ``--method ce`` run of the same
architecture, given like any teacher (``--teacher RUN_DIR``); the engine runs it frozen on the same
augmented rows as the student, which starts from scratch. This is the official code's
``loss_kd_self`` (KL batchmean here). The paper's Eq. 7 has neither T^2 nor ``kl_weight``; with its
alpha = 0.95 that literal form shrinks the whole loss about twentyfold and barely trains. The
official code multiplies the KL by T^2 and by a per-model ``multiplier`` while averaging it over the
K classes as well, i.e. kl_weight = multiplier / K; its CIFAR-100 ResNet-18 setting (alpha = 0.95,
T = 6, multiplier = 50) gives kl_weight = 0.5, our default, the same strength for any K. The
official teacher is the best-on-test checkpoint of its run; ours is whatever ``model.pt`` you give
(our runs save the final epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import require
from ..losses import cross_entropy, kd_kl
from .base import Batch, Method, Outputs


@dataclass
class TfKDSelfOptions:
    temperature: float = 6.0
    alpha: float = 0.95
    kl_weight: float = 0.5

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "a number in [0, 1]")
        require(self.kl_weight >= 0, "method.kl_weight", self.kl_weight, "a number >= 0")


class TfKDSelf(Method):
    name = "tf_kd_self"
    summary = "Tf-KD self-teacher: a frozen, normally trained copy of the network teaches it (CVPR 2020)"
    Options = TfKDSelfOptions
    term_names = ("tfkd_ce", "tfkd_self_kl")
    provides_task_loss = True
    teachers_needed = (1, 1)

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        student = out.logits[rows]
        kl = o.kl_weight * kd_kl(student, out.teachers[0].logits[rows], o.temperature)
        return {"tfkd_ce": (1 - o.alpha) * cross_entropy(student, batch.loss_targets(out.logits.shape[1])[rows]),
                "tfkd_self_kl": o.alpha * kl}
