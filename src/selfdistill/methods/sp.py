"""SP: Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019).

Inputs the teacher represents alike should be represented alike by the student. For one layer of
each network, with the batch's row-normalised B x B similarity matrices G~ (formula in
``losses/sp.py``):

    L = ce_weight * CE(z_s, y) + gamma * (1/B^2) * ||G~_teacher - G~_student||_F^2

There is no official code from the authors; RepDistiller's ``SP`` is acknowledged as verified by
them, and its CIFAR-100 benchmark settings are our defaults: gamma = 3000, the CE at weight 1 and
no KD term, on the output of the last convolutional stage (RepDistiller's ``feat[-2]``). Here that
is the last of the model's stages (``tap_names``) on each side, unless ``student_layer`` /
``teacher_layer`` name another module path (``name`` or ``name:input``). The channel counts need not
match. The loss depends on the batch size (G is B x B), and a batch of one carries no similarity, so
SP needs at least 2 rows.

The cross-entropy covers the supervised rows (against the mixed targets under mixup/CutMix); the
similarity covers every row the teacher saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError, require
from ..losses import cross_entropy, sp_loss
from ..models.taps import tap_names
from .base import Batch, Method, Outputs, SetupContext


@dataclass
class SPOptions:
    gamma: float = 3000.0
    ce_weight: float = 1.0
    student_layer: str = ""
    teacher_layer: str = ""

    def check(self) -> None:
        require(self.gamma >= 0, "method.gamma", self.gamma, "a number >= 0")
        require(self.ce_weight >= 0, "method.ce_weight", self.ce_weight, "a number >= 0")


def pick_layer(model: nn.Module, chosen: str, field: str) -> str:
    """``chosen`` if ``model`` has that module, its last stage when ``chosen`` is empty."""
    stages = tap_names(model)
    if not chosen:
        if not stages:
            raise UserError(f"{field}: {type(model).__name__} has no stages or child modules to tap")
        return stages[-1]
    if chosen.partition(":")[0] not in dict(model.named_modules()):
        raise UserError.bad_value(field, chosen, f"a module path of {type(model).__name__}, e.g. {', '.join(stages)}")
    return chosen


class SP(Method):
    name = "sp"
    summary = "Similarity-preserving KD: match the teacher's batch similarity matrix at one layer (ICCV 2019)"
    Options = SPOptions
    term_names = ("sp_ce", "sp")
    provides_task_loss = True
    min_batch_size = 2
    teachers_needed = (1, 1)

    def __init__(self, options: SPOptions | None = None) -> None:
        super().__init__(options)
        self.layers: tuple[str, str] | None = None  # (student, teacher), known after setup

    def setup(self, ctx: SetupContext) -> None:
        if not ctx.teachers:
            raise UserError("method.name=sp needs a teacher; pass one with --teacher")
        self.layers = (pick_layer(ctx.model, self.options.student_layer, "method.student_layer"),
                       pick_layer(ctx.teachers[0], self.options.teacher_layer, "method.teacher_layer"))

    @property
    def taps(self) -> tuple[str, ...]:
        return () if self.layers is None else (self.layers[0],)

    def teacher_taps(self) -> list[tuple[str, ...]]:
        return [] if self.layers is None else [(self.layers[1],)]

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        student_layer, teacher_layer = self.layers
        rows = batch.supervised_rows()
        similarity = sp_loss(out.features[student_layer], out.teachers[0].features[teacher_layer])
        ce = cross_entropy(out.logits[rows], batch.loss_targets(out.logits.shape[1])[rows])
        return {"sp_ce": self.options.ce_weight * ce, "sp": self.options.gamma * similarity}
