"""PS-KD: Self-Knowledge Distillation with Progressive Refinement of Targets (Kim et al., ICCV 2021).

Each sample's target mixes its label with the model's own prediction for that sample from the
previous epoch, with a weight that grows linearly over training:

    alpha_e = alpha_T * (e + 1) / E        (0-based epoch e of E)
    t_i = (1 - alpha_e) * onehot(y_i) + alpha_e * P[i]
    L = cross-entropy(z_i, t_i)            (replaces the hard-label loss; P is a constant)

P is an N x K memory indexed by the *dataset index* of each sample, initialised to the one-hot
labels (so epoch-0 targets are one-hot) and overwritten after every step with softmax(z) at T = 1 of
that step's training forward (augmented view, train-mode BN, parameters before the update), as in
the official code. Under DDP the rows of all ranks are gathered before the write, so every rank's
memory stays complete. alpha_T = 0.8. Not combinable with mixup/CutMix: a prediction on a mixed
image is not the prediction for the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..distributed import Dist, all_gather_rows
from ..errors import require
from ..losses import cross_entropy
from .base import Batch, Method, Outputs, SetupContext


@dataclass
class PSKDOptions:
    alpha_t: float = 0.8

    def check(self) -> None:
        require(0 <= self.alpha_t <= 1, "method.alpha_t", self.alpha_t, "a number in [0, 1]")


class PSKD(Method):
    name = "ps_kd"
    summary = "progressive self-KD: targets mix the label with last epoch's own prediction (ICCV 2021)"
    Options = PSKDOptions
    term_names = ("pskd_ce",)
    replicable = True
    provides_task_loss = True
    supports_mixing = False
    uses_total_epochs = True  # alpha ramps over train.epochs

    def __init__(self, options: PSKDOptions | None = None) -> None:
        super().__init__(options)
        self.memory: torch.Tensor | None = None
        self.alpha, self.epochs, self.dist = 0.0, 1, Dist()

    def setup(self, ctx: SetupContext) -> None:
        self.memory = F.one_hot(ctx.train_labels, ctx.num_classes).float()
        self.epochs, self.dist = ctx.epochs, ctx.dist

    def start_epoch(self, epoch: int) -> None:
        self.alpha = self.options.alpha_t * (epoch + 1) / self.epochs

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        rows = batch.supervised_rows()
        onehot = F.one_hot(batch.labels[rows], out.logits.shape[1]).float()
        targets = (1 - self.alpha) * onehot + self.alpha * self.memory[batch.indices[rows]]
        return {"pskd_ce": cross_entropy(out.logits[rows], targets)}

    def update(self, out: Outputs, batch: Batch) -> None:
        new = batch.parts["new"]
        probs = all_gather_rows(out.logits[new].detach().float().softmax(1), self.dist)
        indices = all_gather_rows(batch.indices[new], self.dist)
        self.memory[indices] = probs

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = state["memory"]
