"""Distillation and classification losses: pure functions of tensors, no state, no models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's distillation term, ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Reduction is *batchmean*: summed over classes, averaged over the rows. The teacher side is
    detached, so the target carries no gradient; the T^2 factor keeps the gradient scale comparable
    across temperatures (Hinton et al., 2015). Computed in float32 whatever the input dtype.
    """
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def ensemble_probs(logits: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """The teachers' predictive distribution: softmax(z / T) of one teacher, or the mean of the members'
    probabilities for an ensemble (Hinton et al. 2015; Stanton et al. 2021); detached, in float32."""
    with torch.no_grad():
        return torch.stack([F.softmax(z.float() / temperature, dim=1) for z in logits]).mean(0)


def kl_to_target(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(target || softmax(student / T))`` for a target that already is a distribution
    (batchmean, target detached)."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    kl = F.kl_div(log_student, target_probs.detach().float(), reduction="batchmean")
    return kl * (t * t)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against class indices (int64) or per-row probability vectors (float).

    ``label_smoothing`` uses the uniform convention ``(1 - eps) * onehot + eps / K``.
    """
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
