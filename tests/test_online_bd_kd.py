"""BD-KD against hand-computed values (explicit sums over classes), the entropy-gap rule, gradient isolation
between the two networks, and its options."""

import math

import pytest
import torch
import torch.nn as nn

from hand import kl, softmax
from selfdistill.errors import UserError
from selfdistill.methods import METHODS, Batch, Outputs, build_method
from selfdistill.methods.base import NetworkSpec, SetupContext, term_owner
from selfdistill.methods.bd_kd import BDKD, BDKDOptions, divergence_weights

CPU = torch.device("cpu")


def ctx(networks=None):
    return SetupContext(nn.Linear(4, 3), "cnn", 3, (1, 2, 2), torch.arange(6) % 3, 2, CPU, networks=networks or {})


def batch(rows):
    return Batch.new(torch.zeros(rows, 1, 2, 2), torch.zeros(rows, dtype=torch.long))


def method(**options):
    return BDKD(BDKDOptions(teacher_model="cnn", **options))


def run(m, z_s, z_t):
    return m.losses(Outputs(z_s, others={"teacher": Outputs(z_t)}), batch(len(z_s)))


# --------------------------------------------------------------------------- independent formulas, plain Python
def entropy(p):
    return -sum(v * math.log(v) for v in p)


def test_registered_and_declares_an_online_teacher():
    stack = build_method({"name": "bd_kd", "teacher_model": "cnn"})
    assert METHODS["bd_kd"] is BDKD
    assert stack.networks(ctx()) == [NetworkSpec("teacher", "cnn")]
    assert set(stack.term_names) == {"ce", "bd_kd_kl", "teacher_ce", "teacher_bd_kd_kl"}
    assert term_owner("teacher_bd_kd_kl", stack.roles) == "teacher" and term_owner("bd_kd_kl", stack.roles) == "student"


def test_both_terms_match_hand_computed_values():
    z_s = [[2.0, 0.0, -1.0], [0.0, 0.5, 0.0], [1.0, 1.0, 3.0]]
    z_t = [[0.0, 1.0, 0.0], [3.0, -1.0, 0.0], [1.0, 2.0, 0.5]]
    tau, gap_scale, w_s, w_t = 2.0, 0.5, 0.7, 1.3
    student = teacher = 0.0
    for zs, zt in zip(z_s, z_t):
        p_s, p_t = softmax(zs, tau), softmax(zt, tau)
        b = 1 / (1 + math.exp(-(entropy(p_s) - entropy(p_t)) / gap_scale))  # reverse-KL weight
        student += (1 - b) * kl(p_t, p_s) + b * kl(p_s, p_t)
        teacher += kl(p_t, p_s)  # the teacher's regulariser is the reverse KL, teacher first
    terms = run(method(temperature=tau, gap_scale=gap_scale, student_weight=w_s, teacher_weight=w_t),
                torch.tensor(z_s), torch.tensor(z_t))
    assert terms["bd_kd_kl"].item() == pytest.approx(w_s * tau ** 2 * student / 3, rel=1e-5)
    assert terms["teacher_bd_kd_kl"].item() == pytest.approx(w_t * tau ** 2 * teacher / 3, rel=1e-5)


def test_equal_entropies_weigh_both_divergences_one_half():
    # the teacher's logits are the student's permuted: the same entropy, a different distribution
    z_s = torch.tensor([[3.0, 1.0, 0.0], [0.2, -1.0, 2.0]])
    z_t = z_s[:, [2, 0, 1]]
    m = method()
    student = run(m, z_s, z_t)["bd_kd_kl"].item()
    expected = 0.0
    for zs, zt in zip(z_s.tolist(), z_t.tolist()):
        p_s, p_t = softmax(zs, 1.0), softmax(zt, 1.0)
        expected += 0.5 * kl(p_t, p_s) + 0.5 * kl(p_s, p_t)
    assert student == pytest.approx(expected / 2, rel=1e-5)
    assert m.stats()["bd_kd_forward_weight"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("gap_scale", [0.0, 0.3, 1.0])
def test_an_over_confident_student_leans_on_forward_kl_an_under_confident_one_on_reverse_kl(gap_scale):
    flat, sharp = torch.tensor([[0.1, 0.0, -0.1]]), torch.tensor([[6.0, 0.0, -2.0]])
    m = method(gap_scale=gap_scale)
    run(m, sharp, flat)  # student sharper than the teacher: lower entropy, over-confident
    over = m.stats()["bd_kd_forward_weight"].item()
    run(m, flat, sharp)  # student flatter: under-confident
    under = m.stats()["bd_kd_forward_weight"].item()
    assert over > 0.5 > under
    assert over + under == pytest.approx(1.0)  # the sigmoid's symmetry (and the switch's)
    if gap_scale == 0:
        assert (over, under) == (1.0, 0.0)


def test_the_forward_weight_falls_as_the_student_grows_less_confident():
    z_t = torch.tensor([[2.0, 0.0, 0.0]]).expand(5, 3)
    z_s = torch.tensor([[4.0, 0.0, 0.0]]) * torch.tensor([[2.0], [1.0], [0.5], [0.25], [0.0]])
    forward, reverse = divergence_weights(torch.log_softmax(z_s, 1), torch.log_softmax(z_t, 1), 1.0)
    assert torch.all(forward[1:] < forward[:-1]) and torch.allclose(forward + reverse, torch.ones(5))


def test_each_network_s_term_has_no_gradient_into_the_other_network():
    torch.manual_seed(0)
    z_s = torch.randn(4, 5, requires_grad=True)
    z_t = torch.randn(4, 5, requires_grad=True)
    terms = run(method(temperature=2.0), z_s, z_t)
    (g_t,) = torch.autograd.grad(terms["bd_kd_kl"], z_t, retain_graph=True, allow_unused=True)
    (g_s,) = torch.autograd.grad(terms["teacher_bd_kd_kl"], z_s, allow_unused=True)
    assert g_t is None or torch.count_nonzero(g_t) == 0
    assert g_s is None or torch.count_nonzero(g_s) == 0


def test_the_weights_carry_no_gradient():
    # the student's gradient is that of the weighted sum with the weights held as constants
    torch.manual_seed(1)
    z_s, z_t = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    (grad,) = torch.autograd.grad(run(method(), z_s, z_t)["bd_kd_kl"], z_s)
    log_s, log_t = torch.log_softmax(z_s, 1), torch.log_softmax(z_t, 1)
    with torch.no_grad():
        gap = -(log_s.exp() * log_s).sum(1) + (log_t.exp() * log_t).sum(1)
        b = torch.sigmoid(gap)
    forward_kl = (log_t.exp() * (log_t - log_s)).sum(1)
    reverse_kl = (log_s.exp() * (log_s - log_t)).sum(1)
    (expected,) = torch.autograd.grad(((1 - b) * forward_kl + b * reverse_kl).mean(), z_s)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_the_stack_adds_both_cross_entropies_and_both_distillation_terms():
    stack = build_method({"name": "bd_kd", "teacher_model": "cnn"})
    stack.networks(ctx())
    stack.setup(ctx({"teacher": nn.Linear(4, 3)}))
    z_s, z_t = torch.randn(2, 3), torch.randn(2, 3)
    terms = stack.losses(Outputs(z_s, others={"teacher": Outputs(z_t)}), batch(2))
    assert set(terms) == {"ce", "teacher_ce", "bd_kd_kl", "teacher_bd_kd_kl"}
    assert terms["teacher_ce"].item() == pytest.approx(nn.functional.cross_entropy(z_t, torch.zeros(2).long()).item())


@pytest.mark.parametrize(("options", "message"), [
    ({}, "method.teacher_model: set the architecture of the online teacher, e.g. --set method.teacher_model=resnet56"),
    ({"teacher_model": "resnet57"}, "method.teacher_model='resnet57' is not allowed (did you mean 'resnet56'?)"),
    ({"teacher_model": "cnn", "temperature": 0.0}, "method.temperature=0.0"),
    ({"teacher_model": "cnn", "student_weight": -1.0}, "method.student_weight=-1.0"),
    ({"teacher_model": "cnn", "teacher_weight": -0.5}, "method.teacher_weight=-0.5"),
    ({"teacher_model": "cnn", "gap_scale": -1.0}, "method.gap_scale=-1.0"),
])
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(UserError) as error:
        build_method({"name": "bd_kd", **options})
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text
    if message.startswith("method.teacher_model="):
        assert "resnet20" in text and "wrn_40_2" in text  # names the allowed architectures
