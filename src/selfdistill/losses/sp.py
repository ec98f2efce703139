"""Similarity-preserving KD (Tung & Mori, ICCV 2019): inputs that the teacher finds similar should be
similar for the student too, compared through the batch's pairwise similarity (Gram) matrices.

With A the (B, D) per-sample flattened feature map of one layer:

    G = A A^T (B x B),  G~ = G with each row L2-normalised
    L_SP = (1/B^2) * || G~_teacher - G~_student ||_F^2

Student and teacher widths need not match. As in RepDistiller's ``SP`` (verified by the authors), the
Gram matrices are computed in float32, outside autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(features: torch.Tensor) -> torch.Tensor:
    """The row-normalised (B, B) Gram matrix of features flattened per sample."""
    flat = features.float().flatten(1)
    with torch.autocast(flat.device.type, enabled=False):
        return F.normalize(flat @ flat.T, dim=1)


def sp_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """(1/B^2) * ||G~_t - G~_s||_F^2, teacher detached."""
    batch = len(student_features)
    diff = similarity(teacher_features.detach()) - similarity(student_features)
    return diff.pow(2).sum() / (batch * batch)
