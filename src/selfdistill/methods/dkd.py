"""DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

KD's loss splits into a target-class part (TCKD: the binary "label vs the rest" distributions) and a
non-target part (NCKD: the distributions over the other classes), and KD = TCKD + (1 - p_t) NCKD
with p_t the teacher's target probability, which suppresses NCKD exactly where the teacher is
confident. DKD weights the parts freely (formulas in ``losses/dkd.py``):

    L = ce_weight * CE(z_s, y) + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)

with epochs counted from 1, so the first epoch has weight 1 / warmup (``warmup_epochs = 0``: no
warm-up). Defaults are the official code's (mdistiller) global settings: alpha = 1, beta = 8, T = 4,
warm-up 20 epochs, ce_weight = 1. Its CIFAR-100 configs set beta per pair (8 for resnet32x4 ->
resnet8x4, 2 for resnet56 -> resnet20, 6 for wrn40_2 -> wrn16_2 and vgg13 -> vgg8); ImageNet uses
T = 1, warm-up 1, beta 0.5 (R34 -> R18).

Where we differ from the official code: the binary log-probabilities come from log-sum-exp rather
than the log of summed probabilities (same value, finite for confident teachers). The split needs
each row's label, so DKD covers the supervised rows only and refuses mixup/CutMix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import require
from ..losses import cross_entropy, dkd_parts
from .base import Batch, Method, Outputs


@dataclass
class DKDOptions:
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20
    ce_weight: float = 1.0

    def check(self) -> None:
        require(self.alpha >= 0, "method.alpha", self.alpha, "a number >= 0")
        require(self.beta >= 0, "method.beta", self.beta, "a number >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.warmup_epochs >= 0, "method.warmup_epochs", self.warmup_epochs, "an integer >= 0 (0: no warm-up)")
        require(self.ce_weight >= 0, "method.ce_weight", self.ce_weight, "a number >= 0")


def warmup_weight(epoch: int, warmup_epochs: int) -> float:
    """min(epoch / warmup, 1) for the 1-indexed ``epoch``; 1 without warm-up."""
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs else 1.0


class DKD(Method):
    name = "dkd"
    summary = "Decoupled KD: target and non-target parts of KD weighted separately (CVPR 2022)"
    Options = DKDOptions
    term_names = ("dkd_ce", "dkd_tckd", "dkd_nckd")
    provides_task_loss = True
    supports_mixing = False
    teachers_needed = (1, 1)

    def __init__(self, options: DKDOptions | None = None) -> None:
        super().__init__(options)
        self.weight = warmup_weight(1, self.options.warmup_epochs)

    def start_epoch(self, epoch: int) -> None:
        self.weight = warmup_weight(epoch + 1, self.options.warmup_epochs)

    def notes(self, epochs: int) -> list[str]:
        warmup = self.options.warmup_epochs
        if warmup <= epochs:
            return []
        return [f"dkd's warm-up of {warmup} epochs is longer than the run's {epochs}: its KD terms reach only "
                f"{epochs}/{warmup} of their weight (mdistiller's 20 are of 240 epochs; scale method.warmup_epochs "
                "to the run)"]

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        student, labels = out.logits[rows], batch.labels[rows]
        tckd, nckd = dkd_parts(student, out.teachers[0].logits[rows], labels, o.temperature)
        return {"dkd_ce": o.ce_weight * cross_entropy(student, labels),
                "dkd_tckd": self.weight * o.alpha * tckd, "dkd_nckd": self.weight * o.beta * nckd}
