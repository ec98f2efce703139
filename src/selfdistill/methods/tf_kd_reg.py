"""Tf-KD_reg: teacher-free KD with a manually designed "virtual teacher" (Yuan et al., CVPR 2020).

The virtual teacher puts probability a on the label and (1 - a) / (K - 1) on every other class,
and regularises the student like a teacher would. Two forms:

* ``variant: code`` (default), the official ``loss_kd_regularization``, which produced the paper's
  numbers: the target is softmax(p_d / T), a softmax of the *probabilities* (nearly uniform: 0.1045
  on the label for K = 10 at T = 20); the student stays at T = 1; no T^2:

      L = (1 - alpha) * CE(z, y) + alpha * kl_weight * KL(softmax(p_d / T) || softmax(z))   (batchmean)

  The official code averages the KL over batch *and* classes and multiplies it by a per-model
  ``multiplier``, i.e. kl_weight = multiplier / K; CIFAR-100 ResNet-18 uses alpha = 0.1, T = 20,
  multiplier = 100 = K, so kl_weight = 1 is our default, the same strength for any K. This form is
  close to label smoothing, which matches the paper's finding that Tf-KD_reg ~ LSR.
* ``variant: paper``, the paper's Eq. 9 as written: the teacher softened by tempering its
  log-probabilities, p_d^T = softmax(log(p_d) / T) (0.135 on the label and 0.096 elsewhere for K = 10
  at T = 20, near the paper's Fig. 3), the student at T, batchmean KL, no T^2. With the paper's
  alpha = 0.1 and T = 20 its gradient is about 1e-4 of the cross-entropy's: it trains as plain CE
  scaled by 0.9, which is why it is not the default.

Defaults a = 0.99, T = 20, alpha = 0.1. With mixup/CutMix the virtual teacher is built from the
mixed target t: a * t + (1 - a) * (1 - t) / (K - 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import require
from ..losses import cross_entropy
from .base import Batch, Method, Outputs


@dataclass
class TfKDRegOptions:
    a: float = 0.99
    temperature: float = 20.0
    alpha: float = 0.1
    kl_weight: float = 1.0
    variant: Literal["code", "paper"] = "code"

    def check(self) -> None:
        require(0 < self.a < 1, "method.a", self.a, "a number in (0, 1)")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "a number in [0, 1]")
        require(self.kl_weight >= 0, "method.kl_weight", self.kl_weight, "a number >= 0")


def virtual_teacher(targets: torch.Tensor, a: float) -> torch.Tensor:
    """a on the (mixed) target mass, the rest spread evenly over the other classes."""
    k = targets.shape[1]
    return a * targets + (1 - a) * (1 - targets) / (k - 1)


class TfKDReg(Method):
    name = "tf_kd_reg"
    summary = "Tf-KD with a virtual teacher (a on the label, softened by T) (CVPR 2020)"
    Options = TfKDRegOptions
    term_names = ("tfkd_ce", "tfkd_reg_kl")
    replicable = True
    provides_task_loss = True

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        logits, k = out.logits[rows].float(), out.logits.shape[1]
        teacher = virtual_teacher(batch.targets(k)[rows], o.a)
        if o.variant == "code":
            target, student = F.softmax(teacher / o.temperature, dim=1), F.log_softmax(logits, 1)
        else:
            target, student = F.softmax(teacher.log() / o.temperature, dim=1), F.log_softmax(logits / o.temperature, 1)
        kl = o.kl_weight * F.kl_div(student, target, reduction="batchmean")
        return {"tfkd_ce": (1 - o.alpha) * cross_entropy(logits, batch.loss_targets(k)[rows]),
                "tfkd_reg_kl": o.alpha * kl}
