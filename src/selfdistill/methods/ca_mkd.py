"""CA-MKD: Confidence-Aware Multi-teacher Knowledge Distillation (Zhang, Chen, Wang, ICASSP 2022).

K >= 2 frozen teachers teach one student; each teacher's say is weighted *per sample* by how well it
predicts that sample's label. With l_k(n) the cross-entropy of teacher k on sample n, the weights are

    w_k(n) = (1 - softmax_k(l_1(n) .. l_K(n))) / (K - 1)          (sum to 1 over k; low loss, high weight)

Logit term, at temperature tau:

    L_kd = 1/(B K) sum_n sum_k w_k(n) tau^2 KL(softmax(z_t^k(n) / tau) || softmax(z_s(n) / tau))

Intermediate term: the student's last-stage map f_s is resized to teacher k's spatial size (adaptive
average pooling when it is larger, bilinear interpolation when smaller) and adapted, h_k = phi_k(f_s),
phi_k a 1x1 conv + BN + ReLU to teacher k's channel count. h_k goes through teacher k's own frozen
head (``model.head``, else ``fc`` after global average pooling) to give l'_k(n) = CE(head_k(h_k), y),
hence weights w'_k as above, and

    L_inter = 1/(B K) sum_n sum_k w'_k(n) mean_chw (h_k(n) - f_t^k(n))^2

Total: ``L = gamma CE + alpha L_kd + beta L_inter`` (gamma = 1, alpha = 1, beta = 50, tau = 4), with
the intermediate term weighted 0 before epoch ``inter_start_epoch`` (official: off in the first epoch;
it is still computed then, as in the official code, so the adapters stay in the graph).

Following the official code (Rorozhl/CA-MKD: ``train_distill_multi_teacher`` in ``helper/loops.py``,
``distiller_zoo/CAMKD.py``, ``CalWeight``/``Embed`` in ``models/util.py``): the extra 1/K on top of the
batch mean is kept; w'_k is *not* detached, so the adapters also learn to move weight between
teachers (``detach_inter_weights: true`` stops that); the adapter's 1x1 conv has a bias. Where we
differ: the official loop resizes the already-resized student map for each next teacher, we resize
the original map for every teacher (the same when the teachers' maps share a size, as in the paper's
3 x ResNet32x4); and the map is the last stage's output (``tap_names``), which for pre-activation
models (WRN) lies before the final BN-ReLU that the official ``feat[-2]`` includes. Teachers are
frozen (``requires_grad_(False)``), never under ``no_grad``, so gradient reaches the adapters through
their heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, require
from ..losses import cross_entropy
from ..models.heads import feature_shapes
from ..models.taps import tap_names
from .base import Batch, Method, Outputs, SetupContext


@dataclass
class CAMKDOptions:
    gamma: float = 1.0
    alpha: float = 1.0
    beta: float = 50.0
    temperature: float = 4.0
    inter_start_epoch: int = 1
    detach_inter_weights: bool = False

    def check(self) -> None:
        for name in ("gamma", "alpha", "beta"):
            require(getattr(self, name) >= 0, f"method.{name}", getattr(self, name), "a number >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.inter_start_epoch >= 0, "method.inter_start_epoch", self.inter_start_epoch, "an integer >= 0")


def confidence_weights(losses: torch.Tensor) -> torch.Tensor:
    """(K, B) per-teacher, per-sample losses -> weights (1 - softmax over teachers) / (K - 1)."""
    return (1 - torch.softmax(losses, dim=0)) / (losses.shape[0] - 1)


def weighted_kd(student: torch.Tensor, teachers: list[torch.Tensor], labels: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """The logit term: confidence-weighted tau^2 KL per teacher and sample, summed, over B K."""
    t = float(temperature)
    with torch.no_grad():
        z_t = torch.stack([z.float() for z in teachers])  # K, B, C
        weights = confidence_weights(torch.stack([F.cross_entropy(z, labels, reduction="none") for z in z_t]))
        log_p_t = F.log_softmax(z_t / t, dim=2)
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=2) * (t * t)  # K, B
    return (weights * kl).sum() / kl.numel()


def resize_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool a map down to ``size``, or upsample it bilinearly when it is smaller."""
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


def teacher_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What maps a teacher's last-stage map to its logits: ``model.head``, else ``fc`` after pooling."""
    if callable(getattr(model, "head", None)):
        return model.head
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return lambda x: fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
    return None


def adapter(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CAMKD(Method):
    name = "ca_mkd"
    summary = "confidence-aware multi-teacher KD (ICASSP 2022): per-sample teacher weights from their label loss"
    Options = CAMKDOptions
    term_names = ("camkd_ce", "camkd_kl", "camkd_inter")
    provides_task_loss = True
    supports_mixing = False
    min_batch_size = 2
    teachers_needed = (2, None)

    def __init__(self, options: CAMKDOptions | None = None) -> None:
        super().__init__(options)
        self.student_tap, self.teacher_paths = "", []
        self.heads: list[Callable[[torch.Tensor], torch.Tensor]] = []
        self.adapters = nn.ModuleList()
        self.sizes: list[tuple[int, int]] = []
        self.start_epoch(0)

    def setup(self, ctx: SetupContext) -> None:
        if len(ctx.teachers) < 2:
            raise UserError(f"method.name=ca_mkd needs at least 2 teachers; got {len(ctx.teachers)}")
        self.student_tap = tap_names(ctx.model)[-1]
        self.teacher_paths = [tap_names(t)[-1] for t in ctx.teachers]
        s_shape = feature_shapes(ctx.model, ctx.input_shape, [self.student_tap])[self.student_tap]
        names = ctx.teacher_names or [type(t).__name__ for t in ctx.teachers]
        t_shapes, self.heads = [], []
        for teacher, path, name in zip(ctx.teachers, self.teacher_paths, names):
            teacher.requires_grad_(False)
            t_shapes.append(feature_shapes(teacher, ctx.input_shape, [path])[path])
            if len(s_shape) != 3 or len(t_shapes[-1]) != 3:
                raise UserError(f"method.name=ca_mkd: the last stages of {ctx.model_name} (student) and {name} "
                                "(teacher) must be convolutional feature maps; allowed: convolutional models "
                                "(cnn, resnet*, vgg*, wrn*, densenet*)")
            head = teacher_head(teacher)
            if head is None or not self._head_works(head, t_shapes[-1], ctx):
                raise UserError(f"method.name=ca_mkd: teacher {name} has no head(feature map) -> logits and no "
                                "linear fc after global pooling to reuse on the student's adapted features")
            self.heads.append(head)
        self.adapters = nn.ModuleList([adapter(s_shape[0], t[0]) for t in t_shapes]).to(ctx.device)
        self.sizes = [tuple(t[1:]) for t in t_shapes]

    @staticmethod
    def _head_works(head: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size, ctx: SetupContext) -> bool:
        try:
            with torch.no_grad():
                logits = head(torch.zeros(2, *shape, device=ctx.device))
        except (RuntimeError, ValueError, TypeError):
            return False
        return tuple(logits.shape) == (2, ctx.num_classes)

    @property
    def taps(self) -> tuple[str, ...]:
        return (self.student_tap,) if self.student_tap else ()

    def teacher_taps(self) -> list[tuple[str, ...]]:
        return [(p,) for p in self.teacher_paths]

    def modules(self) -> dict[str, nn.Module]:
        return {"adapters": self.adapters}

    def start_epoch(self, epoch: int) -> None:
        self.inter_weight = self.options.beta if epoch >= self.options.inter_start_epoch else 0.0

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        rows = batch.supervised_rows()
        labels, student = batch.labels[rows], out.logits[rows]
        teachers = out.teachers
        kd = weighted_kd(student, [t.logits[rows] for t in teachers], labels, o.temperature)
        inter = self.intermediate(out.features[self.student_tap][rows],
                                  [t.features[p][rows] for t, p in zip(teachers, self.teacher_paths)], labels)
        return {"camkd_ce": o.gamma * cross_entropy(student, labels), "camkd_kl": o.alpha * kd,
                "camkd_inter": self.inter_weight * inter}

    def intermediate(self, student_map: torch.Tensor, teacher_maps: list[torch.Tensor],
                     labels: torch.Tensor) -> torch.Tensor:
        """L_inter: adapted student maps against each teacher's map, weighted by the teacher heads' CE."""
        ce, mse = [], []
        for phi, head, size, f_t in zip(self.adapters, self.heads, self.sizes, teacher_maps):
            h = phi(resize_to(student_map, size))
            ce.append(F.cross_entropy(head(h).float(), labels, reduction="none"))
            mse.append((h.float() - f_t.detach().float()).pow(2).flatten(1).mean(1))
        weights = confidence_weights(torch.stack(ce))
        if self.options.detach_inter_weights:
            weights = weights.detach()
        mse_all = torch.stack(mse)
        return (weights * mse_all).sum() / mse_all.numel()
