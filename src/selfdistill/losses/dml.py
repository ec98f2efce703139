"""DML's KL as the official TensorFlow code computes it: a pure function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8  # the official code's epsilon, in both places


def official_dml_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean_rows sum_c q_c * log(1e-8 + q_c / (p_c + 1e-8))`` with ``p = softmax(student / T)`` and
    ``q = softmax(teacher / T)``: at T = 1, ``kl_loss_compute(student, teacher)`` of the official DML code
    (YingZhangDUT/Deep-Mutual-Learning, ``train_models.py``), epsilons where that code puts them.

    Where both distributions are moderate it equals KL(q || p) to about 1e-8; each log ratio,
    though, lies within about ±ln(1e8) = ±18.4, so where one network is confident and the other
    gives a class almost nothing the value and its gradient stay far below the exact KL's. The
    teacher side is detached (the official code updates only the student's variables with this
    term). Computed in float32, as the official code does (in float64 for float64 logits).
    """
    t = float(temperature)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    p = F.softmax(student_logits.to(dtype) / t, dim=1)
    q = F.softmax(teacher_logits.detach().to(dtype) / t, dim=1)
    return (q * torch.log(EPS + q / (p + EPS))).sum(dim=1).mean() * (t * t)
