import math

import torch
import torch.nn.functional as F

from selfdistill.losses import cross_entropy, kd_kl


def test_kd_kl_matches_hand_computation():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = 2.0
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) for v in t_row]
        p = [v / sum(p) for v in p]
        q = [math.exp(v / t) for v in s_row]
        q = [v / sum(q) for v in q]
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = t * t * total / 2  # batchmean over 2 rows, times T^2
    assert math.isclose(kd_kl(student, teacher, t).item(), expected, rel_tol=1e-6)


def test_kd_kl_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(5, 7)
    assert kd_kl(z, z.clone(), 3.0).abs().item() < 1e-6
    assert kd_kl(z, z + torch.randn(5, 7), 3.0).item() > 0


def test_kd_kl_target_carries_no_gradient():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    kd_kl(student, teacher, 4.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_kl_uses_batchmean_and_t_squared():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    plain = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="sum") / 6
    assert torch.allclose(kd_kl(s, t, 3.0), plain * 9, rtol=1e-5)
    # doubling the batch by repetition leaves batchmean unchanged
    assert torch.allclose(kd_kl(torch.cat([s, s]), torch.cat([t, t]), 3.0), kd_kl(s, t, 3.0), rtol=1e-5)


def test_cross_entropy_accepts_indices_and_probabilities():
    logits = torch.randn(3, 4)
    labels = torch.tensor([0, 3, 1])
    assert torch.allclose(cross_entropy(logits, labels), cross_entropy(logits, F.one_hot(labels, 4).float()))
    smooth = cross_entropy(logits, labels, label_smoothing=0.1)
    target = 0.9 * F.one_hot(labels, 4).float() + 0.1 / 4
    assert torch.allclose(smooth, cross_entropy(logits, target), atol=1e-6)
