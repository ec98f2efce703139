"""Decoupled KD (Zhao et al., CVPR 2022): KD split into a target-class and a non-target-class part.

With p = softmax(z / T), target class t, the binary split b = [p_t, 1 - p_t] and the distribution
over the other classes p_hat = softmax(z_{!=t} / T):

    TCKD = T^2 * KL(b_teacher || b_student)            (batchmean)
    NCKD = T^2 * KL(p_hat_teacher || p_hat_student)     (batchmean)

Classic KD is TCKD + (1 - p_t of the teacher) * NCKD; DKD weights the two parts freely.

The official code (mdistiller) sums masked probabilities and takes a plain ``log`` of the sums, which
gives log(0) = -inf once a teacher (or student) is confident enough for 1 - p_t to underflow. Here
both log-probabilities of the split come from log-sum-exp over the logit groups (equal in value,
finite for any finite logits), and the non-target distribution drops the target column instead of
subtracting 1000 from it (equal unless logits differ by about 1000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drop_target(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (B, C - 1) columns of ``x`` other than each row's label, in class order (a gather, so no
    host-device synchronisation)."""
    columns = torch.arange(x.shape[1] - 1, device=x.device)[None, :]
    return x.gather(1, columns + (columns >= labels[:, None]))


def split_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 2) log-probabilities [log p_t, log(1 - p_t)] of softmax(logits), by log-sum-exp."""
    total = torch.logsumexp(logits, dim=1)
    target = logits.gather(1, labels[:, None]).squeeze(1)
    others = torch.logsumexp(drop_target(logits, labels), dim=1)
    return torch.stack([target - total, others - total], dim=1)


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each with the T^2 factor, batchmean, teacher detached, in float32."""
    t = float(temperature)
    student = student_logits.float() / t
    teacher = teacher_logits.detach().float() / t
    tckd = F.kl_div(split_log_probs(student, labels), split_log_probs(teacher, labels),
                    reduction="batchmean", log_target=True)
    nckd = F.kl_div(F.log_softmax(drop_target(student, labels), dim=1),
                    F.log_softmax(drop_target(teacher, labels), dim=1), reduction="batchmean", log_target=True)
    return tckd * (t * t), nckd * (t * t)
