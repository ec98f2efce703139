"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).

The student matches the teacher's softened predictions as well as the labels:

    L = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(p_t || softmax(z_s / T))      (batchmean)

with p_t = softmax(z_t / T). The T^2 factor keeps the soft targets' gradients comparable across
temperatures (the paper's argument). With several teachers p_t is the mean of their softened
probabilities, as the paper ensembles and as Stanton et al. (2021) do (their code's log-mean-exp of
log-softmax outputs is the same thing). Defaults T = 4, ce_weight = 0.1, kd_weight = 0.9 are the
CIFAR-100 benchmark settings of RepDistiller and mdistiller; their ImageNet setting is T = 1,
0.5 / 0.5. The paper gives no single setting (T up to 20 on MNIST, a "considerably lower" weight on
the hard labels).

The cross-entropy covers the supervised rows (against the mixed targets under mixup/CutMix); the
distillation covers every row the teacher saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import require
from ..losses import cross_entropy, ensemble_probs, kl_to_target
from .base import Batch, Method, Outputs


@dataclass
class KDOptions:
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.ce_weight >= 0, "method.ce_weight", self.ce_weight, "a number >= 0")
        require(self.kd_weight >= 0, "method.kd_weight", self.kd_weight, "a number >= 0")


class KD(Method):
    name = "kd"
    summary = "Hinton's KD: match a frozen teacher's (or ensemble's) softened predictions (2015)"
    Options = KDOptions
    term_names = ("kd_ce", "kd_kl")
    provides_task_loss = True
    teachers_needed = (1, None)

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        target = ensemble_probs([teacher.logits for teacher in out.teachers], o.temperature)
        ce = cross_entropy(out.logits[rows], batch.loss_targets(out.logits.shape[1])[rows])
        return {"kd_ce": o.ce_weight * ce, "kd_kl": o.kd_weight * kl_to_target(out.logits, target, o.temperature)}
