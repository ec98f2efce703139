"""DRG, LightSKD's Distillation with Reverse Guidance (Wang, Han & Guo, arXiv 2305.09183).

An attention head (see ``models/heads.AttentionHead``) on an intermediate stage is trained with
cross-entropy, and its softened output, detached, teaches the network's final output: the shallow
head is the teacher and the deep one the student, the reverse of BYOT.

    L_drg = CE(head, y) + alpha * T^2 * KL(softmax(head / T) || softmax(z / T))     (batchmean)

T = 4 and alpha = 0.2 as in the official code, on stage ``layer2`` (the official ``adapter_2``). The
stage feature is not detached, so the head's cross-entropy also trains the stages below it, as
there. The head is sized from the tapped stage's real channel count (the official adapter is built
for ResNet-50 widths and fails on ResNet-18); it is a training-only module: the saved model has no
extra parameters, and the run reports the head's parameter count as ``extra_parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError, require
from ..losses import cross_entropy, kd_kl
from ..models.heads import AttentionHead, feature_shapes
from ..models.taps import tap_names
from .base import Batch, Method, Outputs, SetupContext


@dataclass
class DRGOptions:
    stage: str = "layer2"
    temperature: float = 4.0
    alpha: float = 0.2

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.alpha >= 0, "method.alpha", self.alpha, "a number >= 0")


def spatial_shape(ctx: SetupContext, stage: str, field: str) -> torch.Size:
    """The (C, H, W) shape of a stage's output; a one-line error if the stage is missing or flat."""
    if stage not in dict(ctx.model.named_modules()):
        raise UserError.bad_value(field, stage, ", ".join(tap_names(ctx.model)))
    shape = feature_shapes(ctx.model, ctx.input_shape, [stage])[stage]
    if len(shape) != 3:
        raise UserError(f"{field}={stage!r}: {ctx.model_name} gives a flat feature there {tuple(shape)}, a head needs "
                        "a convolutional feature map; use a convolutional model (cnn, resnet*, vgg*, wrn*, densenet*)")
    return shape


class DRG(Method):
    name = "drg"
    summary = "LightSKD's reverse guidance: an attention head on a middle stage teaches the output (2023)"
    Options = DRGOptions
    term_names = ("drg_head_ce", "drg_kl")

    def setup(self, ctx: SetupContext) -> None:
        channels = spatial_shape(ctx, self.options.stage, "method.stage")[0]
        self.head = AttentionHead(channels, ctx.num_classes).to(ctx.device)

    @property
    def taps(self) -> tuple[str, ...]:
        return (self.options.stage,)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"head": self.head}

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        rows = batch.supervised_rows()
        head = self.head(out.features[self.options.stage][rows])
        targets = batch.loss_targets(out.logits.shape[1])[rows]
        kl = kd_kl(out.logits[rows], head, self.options.temperature)
        return {"drg_head_ce": cross_entropy(head, targets), "drg_kl": self.options.alpha * kl}
