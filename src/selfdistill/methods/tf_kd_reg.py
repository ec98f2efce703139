"""Tf-KD_reg: teacher-free KD with a manually designed "virtual teacher" (Yuan et al., CVPR 2020).

The virtual teacher puts probability a on the label and (1 - a) / (K - 1) on every other class;
softened by T, it regularises the student (paper Eqs. 8-9):

    p_d = a on y, (1 - a) / (K - 1) elsewhere;   p_d^T = softmax(log(p_d) / T)
    L = (1 - alpha) * CE(z, y) + alpha * KL(p_d^T || softmax(z / T))           (batchmean, no T^2)

Softening a distribution by T is read as tempering its log-probabilities: for 10 classes at T = 20
that gives 0.135 on the label and 0.096 elsewhere, close to the paper's Fig. 3 (roughly 0.15 and
0.095), whereas the official code's construction gives 0.105 and 0.0995.
Defaults a = 0.99, T = 20, alpha = 0.1 (the paper's CIFAR-100 ResNet-18 setting).

``variant: code`` follows the official ``loss_kd_regularization`` instead, which differs: it takes a
softmax of the *probabilities* divided by T (a nearly uniform target), leaves the student at T = 1,
averages the KL over batch and classes (PyTorch-1 ``'mean'``) and multiplies by ``multiplier``
(100 for CIFAR-100 ResNet-18). That form is close to plain label smoothing.
With mixup/CutMix the virtual teacher is built from the mixed target t: a * t + (1 - a) * (1 - t) / (K - 1).
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
    variant: Literal["paper", "code"] = "paper"
    multiplier: float = 100.0  # variant "code" only

    def check(self) -> None:
        require(0 < self.a < 1, "method.a", self.a, "a number in (0, 1)")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "a number in [0, 1]")


def virtual_teacher(targets: torch.Tensor, a: float) -> torch.Tensor:
    """a on the (mixed) target mass, the rest spread evenly over the other classes."""
    k = targets.shape[1]
    return a * targets + (1 - a) * (1 - targets) / (k - 1)


class TfKDReg(Method):
    name = "tf_kd_reg"
    summary = "Tf-KD with a virtual teacher (a on the label, softened by T) (CVPR 2020)"
    Options = TfKDRegOptions
    term_names = ("tfkd_ce", "tfkd_reg_kl")
    provides_task_loss = True

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        logits, k = out.logits[rows].float(), out.logits.shape[1]
        teacher = virtual_teacher(batch.targets(k)[rows], o.a)
        if o.variant == "paper":
            soft_teacher = F.log_softmax(teacher.log() / o.temperature, dim=1)
            kl = F.kl_div(F.log_softmax(logits / o.temperature, 1), soft_teacher, reduction="batchmean",
                          log_target=True)
        else:
            soft_teacher = F.softmax(teacher / o.temperature, dim=1)
            kl = o.multiplier * F.kl_div(F.log_softmax(logits, 1), soft_teacher, reduction="mean")
        return {"tfkd_ce": (1 - o.alpha) * cross_entropy(logits, batch.loss_targets(k)[rows]),
                "tfkd_reg_kl": o.alpha * kl}
