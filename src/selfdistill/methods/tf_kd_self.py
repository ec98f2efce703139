"""Tf-KD_self: the network trained normally, frozen, teaches a fresh copy of itself (Yuan et al.,
CVPR 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization").

    L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * kl_weight * KL(softmax(z_t / T) || softmax(z_s / T))

The teacher is a model of the same architecture, loaded from ``method.teacher`` (a ``model.pt`` or a
finished run directory, e.g. a ``--method ce`` run), run in eval mode without gradient on the same
augmented batch as the student; the student starts from scratch. This is the official code's
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
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError, require
from ..losses import cross_entropy, kd_kl
from ..models import build_model
from .base import Batch, Method, Outputs, SetupContext


@dataclass
class TfKDSelfOptions:
    teacher: str = ""
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

    def setup(self, ctx: SetupContext) -> None:
        path = Path(self.options.teacher)
        if not self.options.teacher or not path.exists():
            what = (f"method.teacher={self.options.teacher!r} does not exist" if self.options.teacher
                    else "method.teacher is required")
            raise UserError(f"{what}: tf_kd_self needs a trained copy of the network; train one with --method ce "
                            f"--model {ctx.model_name} --out RUN_DIR, then pass --set method.teacher=RUN_DIR")
        path = path / "model.pt" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"method.teacher: {path} does not exist (is the teacher's run finished?)")
        teacher: nn.Module = build_model(ctx.model_name, ctx.num_classes, ctx.input_shape[0], ctx.input_shape[1])
        try:
            teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise UserError(f"method.teacher={str(path)!r} does not hold weights for {ctx.model_name} with "
                            f"{ctx.num_classes} classes ({type(exc).__name__})") from None
        self.teacher = teacher.to(ctx.device).eval().requires_grad_(False)

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        with torch.inference_mode():
            teacher_logits = self.teacher(batch.inputs[rows])
        student = out.logits[rows]
        kl = o.kl_weight * kd_kl(student, teacher_logits.clone(), o.temperature)  # clone: leave inference mode
        return {"tfkd_ce": (1 - o.alpha) * cross_entropy(student, batch.loss_targets(out.logits.shape[1])[rows]),
                "tfkd_self_kl": o.alpha * kl}
