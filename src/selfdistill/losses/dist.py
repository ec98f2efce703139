"""DIST (Huang et al., NeurIPS 2022): match the *relations* of the teacher's predictions rather than
the predictions themselves, with Pearson correlation in place of KL.

With Y = softmax(z / T) (B x C) for student and teacher:

    inter = 1 - mean over rows n    of pearson(Y_s[n, :], Y_t[n, :])    (across classes)
    intra = 1 - mean over classes c of pearson(Y_s[:, c], Y_t[:, c])    (across the batch)

Pearson is the cosine similarity of the mean-centred vectors, with 1e-8 added to the product of the
norms, as in the official code (hunto/DIST_KD). Both terms are returned with the T^2 factor the
official code applies when T != 1.
"""

from __future__ import annotations

import torch


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-row Pearson correlation of two (N, D) tensors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(T^2 * inter-class loss, T^2 * intra-class loss), teacher detached, in float32."""
    t = float(temperature)
    y_s = torch.softmax(student_logits.float() / t, dim=1)
    y_t = torch.softmax(teacher_logits.detach().float() / t, dim=1)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.T, y_t.T).mean()
    return inter * (t * t), intra * (t * t)
