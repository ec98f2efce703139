"""BYOT: Be Your Own Teacher (Zhang et al., ICCV 2019).

A classifier head is attached after every stage but the last (see ``models/heads.BottleneckHead``);
the network's own final classifier is the deepest head. The deepest head teaches the shallower ones
through their logits and through their pooled features:

    L = (1 - alpha) * sum over all heads of CE(z_i, y)
        + alpha * T^2 * sum over shallow heads of KL(softmax(z_final / T) || softmax(z_i / T))
        + beta * sum over shallow heads of hint(F_i, F_final)

with z_final and F_final detached where they teach. The paper leaves alpha, T and beta unstated; we
follow the widely used ICCV-style re-implementation (luanyunteng/pytorch-be-your-own-teacher):
alpha = 0.1, T = 3, beta = 1e-6, and its hint, a *sum* over batch and dimensions of the squared
difference where either feature is positive (hence the tiny beta). Heads are sized from the model's
real stage shapes; each stride brings its stage to the deepest stage's resolution. Test accuracy is
the deepest head's (the model itself); the heads are training-only and not saved with the model.
Needs a model with at least two convolutional stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError, require
from ..losses import cross_entropy, kd_kl
from ..models.heads import BottleneckHead, feature_shapes
from ..models.taps import tap_names
from .base import Batch, Method, Outputs, SetupContext

FINAL_FEATURE = "fc:input"


@dataclass
class BYOTOptions:
    alpha: float = 0.1
    temperature: float = 3.0
    beta: float = 1e-6

    def check(self) -> None:
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "a number in [0, 1]")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.beta >= 0, "method.beta", self.beta, "a number >= 0")


def feature_hint(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences where either feature is positive (teacher detached)."""
    teacher = teacher.detach()
    mask = ((student > 0) | (teacher > 0)).float()
    return ((student - teacher) ** 2 * mask).sum()


class BYOT(Method):
    name = "byot"
    summary = "Be Your Own Teacher: heads on every stage, the deepest teaches the rest (ICCV 2019)"
    Options = BYOTOptions
    term_names = ("byot_ce", "byot_kl", "byot_hint")
    provides_task_loss = True

    def setup(self, ctx: SetupContext) -> None:
        stages = tap_names(ctx.model)
        fc = getattr(ctx.model, "fc", None)
        if len(stages) < 2 or not isinstance(fc, nn.Linear):
            raise UserError(f"method.name=byot: {ctx.model_name} has no stages BYOT can attach heads to (it needs "
                            "two or more convolutional stages and a final linear fc)")
        shapes = list(feature_shapes(ctx.model, ctx.input_shape, stages).values())
        if any(len(shape) != 3 for shape in shapes):
            raise UserError(f"method.name=byot: the stages of {ctx.model_name} are not convolutional feature maps; "
                            "allowed: a convolutional model (cnn, resnet*, vgg*, wrn*, densenet*)")
        last = shapes[-1][-1]
        self.stages = stages[:-1]
        self.heads = nn.ModuleDict({
            s: BottleneckHead(shape[0], fc.in_features, max(shape[-1] // last, 1), ctx.num_classes)
            for s, shape in zip(self.stages, shapes[:-1])}).to(ctx.device)

    @property
    def taps(self) -> tuple[str, ...]:
        return (*self.stages, FINAL_FEATURE)

    def modules(self) -> dict[str, nn.Module]:
        return {"heads": self.heads}

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        final, final_feature = out.logits[rows], out.features[FINAL_FEATURE][rows]
        targets = batch.loss_targets(out.logits.shape[1])[rows]
        ce, kl, hint = cross_entropy(final, targets), final.new_zeros((), dtype=torch.float32), 0.0
        for stage in self.stages:
            logits, feature = self.heads[stage](out.features[stage][rows])
            ce = ce + cross_entropy(logits, targets)
            kl = kl + kd_kl(logits, final, o.temperature)
            hint = hint + feature_hint(feature.float(), final_feature.float())
        return {"byot_ce": (1 - o.alpha) * ce, "byot_kl": o.alpha * kl, "byot_hint": o.beta * hint}
