"""SOKD: Semi-Online Knowledge Distillation (Liu, Liu & Huang, BMVC 2021, arXiv 2111.11747).

KD and DML in one: a pretrained teacher stays frozen, and a trainable "knowledge bridge" branch, a
copy of the teacher's last stage and head fed by the teacher's map before that stage, learns
mutually with the student while distilling the frozen teacher. With KD(a || b) = tau^2 KL(softmax(b /
tau) || softmax(a / tau)) (batchmean) and sg the stop-gradient:

    branch:   CE(z_a, y) + lambda_teacher KD(z_a || z_t) + lambda_student KD(z_a || sg(z_s))
    student:  CE(z_s, y) + lambda_branch KD(z_s || sg(z_a))

so the student learns from the branch, not from the teacher's own output (official
``trainer/sokd.py``, swlzq/Semi-Online-KD @ de7b598). Defaults are its ``configs/sokd.yaml``: tau = 4,
every lambda 1. The branch trains with its own optimiser (role ``branch``); the official code has one
SGD with two parameter groups of the same settings, which is the same update.

The branch is a whole network of the teacher's architecture (``branch.pt`` is then a ``--teacher``):
every module that runs before the last stage is the teacher's, frozen and pinned to eval mode; the
last stage and what follows it train. The trunk therefore runs twice per step, once in the teacher
and once in the branch; that costs a trunk forward (no backward) per step.

Where we differ from the released code, each an option or stated:

* ``branch_init``: the official branch is copied from the teacher *before* the checkpoint loads, and
  the checkpoint has no branch keys, so it starts with the architecture's random initialisation; the
  paper's text (not available to us) may intend a copy of the teacher's last stage. ``random``, the
  default, is the code that made the published numbers; ``teacher`` starts the branch as the teacher.
* The official teacher runs in train mode, so its frozen batch-norms use (and update) batch
  statistics. We keep the teacher and the branch's trunk in eval mode: the frozen parts stay the
  pretrained teacher, and its targets do not depend on the batch.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError, require
from ..losses import kd_kl
from ..models import build_model
from .base import Batch, Method, NetworkSpec, Outputs, SetupContext


@dataclass
class SOKDOptions:
    temperature: float = 4.0
    lambda_teacher: float = 1.0
    lambda_student: float = 1.0
    lambda_branch: float = 1.0
    branch_init: str = "random"

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        for field in ("lambda_teacher", "lambda_student", "lambda_branch"):
            require(getattr(self, field) >= 0, f"method.{field}", getattr(self, field), "a number >= 0")
        require(self.branch_init in ("random", "teacher"), "method.branch_init", self.branch_init,
                "random (the official code) or teacher (a copy of the teacher's last stage)")


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def trunk(model: nn.Module, input_shape: tuple[int, int, int], arch: str) -> list[str]:
    """Paths of the modules whose forward ends before the last stage (``model.stages[-1]``) starts."""
    stages = list(getattr(model, "stages", ()))
    modules = dict(model.named_modules())
    if len(stages) < 2 or stages[-1] not in modules:
        raise UserError(f"method sokd: teacher architecture {arch!r} names no last stage after an earlier one "
                        "(model.stages); SOKD's branch needs one")
    before, after, starts = [], [], []
    hooks = [modules[stages[-1]].register_forward_pre_hook(lambda *_: starts.append(1))]
    hooks += [m.register_forward_hook(lambda *_, path=path: (after if starts else before).append(path))
              for path, m in modules.items() if path]
    with torch.no_grad():
        model.eval()(torch.zeros(2, *input_shape))
    for hook in hooks:
        hook.remove()
    shared = [p for p in set(before) & set(after) if modules[p].state_dict()]
    if len(starts) != 1 or shared:
        raise UserError(f"method sokd: teacher architecture {arch!r} does not run its last stage "
                        f"{stages[-1]!r} once after its other layers; SOKD's branch needs that")
    return sorted(set(before))


class SOKD(Method):
    name = "sokd"
    summary = "Semi-Online KD (BMVC 2021): a trainable branch on a frozen teacher learns mutually with the student"
    Options = SOKDOptions
    term_names = ("sokd_kl", "branch_sokd_teacher_kl", "branch_sokd_student_kl")
    teachers_needed = (1, 1)
    networks_added = (1, 1)  # the branch

    def networks(self, ctx: SetupContext) -> list[NetworkSpec]:
        arch, (channels, size, _) = ctx.teacher_names[0], ctx.input_shape
        options = getattr(ctx.teachers[0], "arch_options", None)  # the teacher's own widths, dropout, ...
        branch = build_model(arch, ctx.num_classes, channels, size, options)  # the architecture's own initialisation
        frozen = trunk(branch, ctx.input_shape, arch)
        teacher = ctx.teachers[0].state_dict()
        keys = teacher if self.options.branch_init == "teacher" else \
            {f"{path}.{key}" for path in frozen for key in branch.get_submodule(path).state_dict()}
        branch.load_state_dict(branch.state_dict() | {key: teacher[key] for key in keys})
        for path in frozen:
            module = branch.get_submodule(path)
            module.requires_grad_(False)
            module.train = types.MethodType(_stay_in_eval, module)  # the engine's .train() leaves it in eval
        return [NetworkSpec("branch", arch, module=branch.train().to(ctx.device))]

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        z_s, z_a, z_t = out.logits, out.others["branch"].logits, out.others["teacher"].logits
        # kd_kl detaches its second argument: each network's terms leave the other's logits untouched
        return {"sokd_kl": o.lambda_branch * kd_kl(z_s, z_a, o.temperature),
                "branch_sokd_teacher_kl": o.lambda_teacher * kd_kl(z_a, z_t, o.temperature),
                "branch_sokd_student_kl": o.lambda_student * kd_kl(z_a, z_s, o.temperature)}
