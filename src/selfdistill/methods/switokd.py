"""SwitOKD: Switchable Online Knowledge Distillation (Qian et al., ECCV 2022).

An online teacher (``teacher_model``, trained from scratch as role ``teacher``) and the student learn
from each other, DML-style, but the teacher pauses whenever it has run too far ahead. Each step
measures three batch-mean L1 distances on the networks' predictions p = softmax(z):

    d_s = mean ||p_s - y||_1,   d_t = mean ||p_t - y||_1,   G = mean ||p_s - p_t||_1   (the "distillation gap")

and an adaptive threshold delta = d_s - exp(-d_t / (d_s + d_t)) * d_t. If G > delta and d_t < d_s the
step is in *expert mode*: only the student learns, from L_S = CE(z_s, y) + KL(sg(p_t) || p_s).
Otherwise it is in *learning mode*: the teacher learns too, from L_T = CE(z_t, y) + KL(sg(p_s) || p_t).
Terms: ``switokd_kl`` (student) and ``teacher_switokd_kl`` (teacher); the stack adds ``ce`` and
``teacher_ce``. In expert mode :meth:`paused` names the teacher, so the engine detaches its terms
(still logged) and does not step it; the teacher has still run forward in train mode, so its
batch-norm statistics move, as in the official code (hfutqian/SwitOKD, ``main.py``), which forwards
both networks in train mode before deciding. The statistic ``switokd_expert`` (1 or 0 per step)
averages to the fraction of expert steps in an epoch.

Details, following the official code: the distances are on the plain predictions (T = 1) and
detached, in float32; the label distances cover the rows that have a label, the gap every row; the KL
terms cover every row. ``temperature`` T (1 in every official script, the default) softens only the
KL terms: KL(softmax(z_other / T) || softmax(z / T)) times T^2, which at T = 1 is the official term.
With several processes (DDP) the sums and row counts are added over all ranks before deciding, so
every rank takes the decision the whole global batch gives. With mixup/CutMix the label y is the
mixed target distribution: it is what each network's cross-entropy fits, so the distance to it keeps
its meaning ("how well does this network fit its training target").

Published setting (CIFAR-100, WRN-16-2 teacher, 0.5x MobileNetV2 student): SGD momentum 0.9, wd 5e-4,
batch 128, teacher lr 0.1, student lr 0.01, 299 epochs; see the recipe ``switokd_c100_*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..distributed import Dist, all_reduce_sum
from ..errors import UserError, require
from ..losses import kd_kl
from ..models import check_model_name
from .base import Batch, Method, NetworkSpec, Outputs, SetupContext

TEACHER = "teacher"


@dataclass
class SwitOKDOptions:
    teacher_model: str | None = None  # the online teacher's architecture (required)
    temperature: float = 1.0

    def check(self) -> None:
        if self.teacher_model is None:
            raise UserError("method.teacher_model: set the architecture of the online teacher, e.g. "
                            "--set method.teacher_model=wrn_16_2")
        check_model_name(self.teacher_model, "method.teacher_model")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")


def switch_distances(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                     rows: slice | torch.Tensor, dist: Dist) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_s, d_t, G): batch-mean L1 distances of the predictions to ``targets`` (on ``rows``) and to each
    other (on every row), detached, in float32, over every rank's rows."""
    with torch.no_grad():
        p_s, p_t = F.softmax(student.float(), dim=1), F.softmax(teacher.float(), dim=1)
        y = targets[rows].float()
        sums = torch.stack([(p_s[rows] - y).abs().sum(), (p_t[rows] - y).abs().sum(), p_s.new_tensor(len(y)),
                            (p_s - p_t).abs().sum(), p_s.new_tensor(len(p_s))])
        all_reduce_sum(sums, dist)
        return sums[0] / sums[2], sums[1] / sums[2], sums[3] / sums[4]


def expert_mode(d_s: torch.Tensor, d_t: torch.Tensor, gap: torch.Tensor) -> bool:
    """The switch: expert mode (teacher paused) iff G > delta and d_t < d_s, delta = d_s - exp(-d_t/(d_s+d_t)) d_t."""
    delta = d_s - torch.exp(-d_t / (d_s + d_t)) * d_t
    return bool(gap > delta) and bool(d_t < d_s)


class SwitOKD(Method):
    name = "switokd"
    summary = "Switchable Online KD (ECCV 2022): an online teacher that pauses when it runs too far ahead"
    Options = SwitOKDOptions
    networks_added = (1, 1)  # the online teacher
    term_names = ("switokd_kl", f"{TEACHER}_switokd_kl")
    stat_names = ("switokd_expert",)

    def __init__(self, options: SwitOKDOptions | None = None) -> None:
        super().__init__(options)
        self.dist = Dist()
        self.expert = False

    def networks(self, ctx: SetupContext) -> list[NetworkSpec]:
        return [NetworkSpec(TEACHER, self.options.teacher_model)]

    def setup(self, ctx: SetupContext) -> None:
        self.dist = ctx.dist

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        z_s, z_t, t = out.logits, out.others[TEACHER].logits, self.options.temperature
        targets = batch.targets(z_s.shape[1])
        self.expert = expert_mode(*switch_distances(z_s, z_t, targets, batch.supervised_rows(), self.dist))
        return {"switokd_kl": kd_kl(z_s, z_t, t), f"{TEACHER}_switokd_kl": kd_kl(z_t, z_s, t)}

    def paused(self, round: int) -> frozenset[str]:
        return frozenset({TEACHER}) if self.expert else frozenset()

    def stats(self) -> dict[str, torch.Tensor]:
        return {"switokd_expert": torch.tensor(1.0 if self.expert else 0.0)}
