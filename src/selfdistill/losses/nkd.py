"""NKD (Yang et al., "Rethinking Knowledge Distillation via Cross-Entropy", arXiv 2208.10139): KD
written as a cross-entropy, with the teacher's target probability weighting the student's log-
probability of the label, and the non-target classes distilled as a normalised distribution.

With S = softmax(z_s), T = softmax(z_t) at temperature 1, target class t, and N(.) the softmax over
the non-target logits divided by the temperature tau:

    L_target     = -(1/B) sum_n sg(T_t) * log S_t
    L_non_target = -tau^2 (1/B) sum_n sum_{i != t} N(z_t / tau)_i * log N(z_s / tau)_i

The method weights L_non_target by gamma. Like the official code (yzd-v/cls_KD), L_non_target is a
cross-entropy, not a KL: its value includes the teacher's non-target entropy, a constant with no
gradient. The arXiv-era code masks the target with -1000 and renormalises; the ICCV-era code drops
the target column, as here; the two agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dkd import drop_target


def nkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_target, L_non_target) as above (the latter with tau^2), teacher detached, in float32."""
    t = float(temperature)
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    log_s_target = F.log_softmax(student, dim=1).gather(1, labels[:, None]).squeeze(1)
    t_target = torch.softmax(teacher, dim=1).gather(1, labels[:, None]).squeeze(1)
    target = -(t_target * log_s_target).mean()
    log_s_rest = F.log_softmax(drop_target(student, labels) / t, dim=1)
    t_rest = torch.softmax(drop_target(teacher, labels) / t, dim=1)
    non_target = -(t_rest * log_s_rest).sum(dim=1).mean()
    return target, non_target * (t * t)
