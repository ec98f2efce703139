"""DML's ``method.kl``: ``official`` is the official TF code's epsilon form, written out again here with
numpy; it agrees with the exact KL at moderate logits and not with confident peers (each log ratio
is capped near ln(1e8)); its targets carry no gradient; a bad value stops with one line."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from selfdistill.engine import resolve
from selfdistill.errors import UserError
from selfdistill.losses import kd_kl, official_dml_kl
from selfdistill.methods import Batch, Outputs, build_method
from selfdistill.methods.base import SetupContext

ROWS, CLASSES = 16, 10


def tf_kl(logits1, logits2):
    """``kl_loss_compute(logits1, logits2)`` of YingZhangDUT/Deep-Mutual-Learning's train_models.py, in numpy
    float64: pred = softmax; mean over rows of sum_c pred2 * log(1e-8 + pred2 / (pred1 + 1e-8))."""

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pred1, pred2 = softmax(np.asarray(logits1, np.float64)), softmax(np.asarray(logits2, np.float64))
    return float(np.mean(np.sum(pred2 * np.log(1e-8 + pred2 / (pred1 + 1e-8)), axis=1)))


def logits(seed, scale=1.0, networks=2):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(ROWS, CLASSES, generator=g)).requires_grad_(True) for _ in range(networks)]


def dml_terms(zs, **options):
    """The DML stack's terms for the student ``zs[0]`` and peers ``zs[1:]``."""
    peers = ["mlp"] * (len(zs) - 1)
    stack = build_method({"name": "dml", "peers": peers, **options})
    ctx = SetupContext(model=nn.Linear(3, 3), model_name="mlp", num_classes=CLASSES, input_shape=(1, 4, 4),
                       train_labels=torch.zeros(ROWS, dtype=torch.long), epochs=1, device=torch.device("cpu"))
    ctx.networks = {spec.role: nn.Linear(3, 3) for spec in stack.networks(ctx)}
    stack.setup(ctx)
    others = {f"peer{k}": Outputs(z) for k, z in enumerate(zs[1:], start=1)}
    batch = Batch.new(torch.zeros(ROWS, 1, 4, 4), torch.zeros(ROWS, dtype=torch.long))
    return stack.losses(Outputs(zs[0], others=others), batch)


def numpy_of(z):
    return z.detach().numpy()


@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_official_loss_is_the_tf_formula(seed, scale):
    a, b = logits(seed, scale)
    assert official_dml_kl(a, b).item() == pytest.approx(tf_kl(numpy_of(a), numpy_of(b)), rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_official_loss_in_float64_puts_the_epsilons_where_the_tf_code_does(scale):
    # in float32 the epsilons' placement shows only below rounding (it weighs on classes the target gives
    # less than ~1e-8); in float64, log((q + 1e-8) / (p + 1e-8)) or log(q / p) would miss by far more than 1e-12
    a, b = (z.double() for z in logits(8, scale))
    assert official_dml_kl(a, b).dtype == torch.float64
    assert official_dml_kl(a, b).item() == pytest.approx(tf_kl(numpy_of(a), numpy_of(b)), rel=1e-12)


def test_official_loss_with_a_temperature_is_t_squared_times_the_tf_formula_on_softened_logits():
    a, b = logits(2, 5.0)
    expected = 4.0 * tf_kl(numpy_of(a) / 2.0, numpy_of(b) / 2.0)
    assert official_dml_kl(a, b, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("reduction, factor", [("mean", 0.5), ("sum", 1.0)])
def test_dml_kl_official_gives_the_tf_formula_for_every_network(scale, reduction, factor):
    zs = logits(3, scale, networks=3)
    terms = dml_terms(zs, kl="official", reduction=reduction)
    z = [numpy_of(t) for t in zs]
    for i, term in enumerate(["dml_kl", "peer1_dml_kl", "peer2_dml_kl"]):
        expected = factor * sum(tf_kl(z[i], z[j]) for j in range(3) if j != i)
        assert terms[term].item() == pytest.approx(expected, rel=1e-5), term


def test_exact_stays_the_default():
    assert resolve([{"method": {"name": "dml"}}]).method["kl"] == "exact"
    zs = logits(4, 20.0)
    assert dml_terms(zs)["dml_kl"].item() == pytest.approx(kd_kl(zs[0], zs[1], 1.0).item(), rel=1e-6)


def test_exact_and_official_agree_at_moderate_logits():
    a, b = logits(5)
    exact, official = kd_kl(a, b, 1.0), official_dml_kl(a, b)
    assert abs(exact.item() - official.item()) < 1e-6
    (g_exact,) = torch.autograd.grad(exact, [a])
    (g_official,) = torch.autograd.grad(official, [a])
    assert torch.allclose(g_exact, g_official, atol=1e-6)


def test_official_caps_each_log_ratio_near_ln_1e8_so_confident_peers_differ_from_the_exact_kl():
    # the setting of methods/dml.py's docstring: 256 rows of 100 classes, both logits 20 x N(0, 1), seed 0
    g = torch.Generator().manual_seed(0)
    a = (20 * torch.randn(256, 100, generator=g)).requires_grad_(True)
    b = 20 * torch.randn(256, 100, generator=g)
    exact, official = kd_kl(a, b, 1.0), official_dml_kl(a, b)
    cap = math.log(1e8)  # 18.42: log(1e-8 + q / (p + 1e-8)) <= log(1e-8 + 1 / 1e-8)
    assert official.item() <= cap + 1e-3 < exact.item()
    assert official.item() == pytest.approx(17.5, abs=0.05) and exact.item() == pytest.approx(49.5, abs=0.05)
    (g_exact,) = torch.autograd.grad(exact, [a])
    (g_official,) = torch.autograd.grad(official, [a])
    assert (g_exact.norm() / g_official.norm()).item() == pytest.approx(4.5, abs=0.05)


def grad_size(term, wrt):
    (g,) = torch.autograd.grad(term, [wrt], retain_graph=True, allow_unused=True)
    return 0.0 if g is None else g.abs().max().item()


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_official_targets_carry_no_gradient(scale):
    zs = logits(7, scale, networks=3)
    terms = dml_terms(zs, kl="official")
    for owner, term in enumerate(["dml_kl", "peer1_dml_kl", "peer2_dml_kl"]):
        assert grad_size(terms[term], zs[owner]) > 0, term
        for other in set(range(3)) - {owner}:
            assert grad_size(terms[term], zs[other]) == 0.0, (term, other)


def test_bad_kl_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(UserError) as error:
        resolve([{"method": {"name": "dml", "kl": "foo"}}])
    message = str(error.value)
    assert "method.kl" in message and "exact" in message and "official" in message and "\n" not in message
