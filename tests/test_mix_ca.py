"""MIX-KD and CA-MKD against hand-computed values, the official formulas re-derived, and their properties."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfdistill.data.mixing import apply_mix
from selfdistill.errors import UserError
from selfdistill.methods import METHODS, Batch, MethodStack, Outputs
from selfdistill.methods.base import SetupContext
from selfdistill.methods.ca_mkd import CAMKD, CAMKDOptions, confidence_weights, resize_to, weighted_kd
from selfdistill.methods.mix_kd import MIXKD, MIXKDOptions, partial_mix_lam
from selfdistill.models import FeatureTaps

CPU = torch.device("cpu")


def ctx(model, teachers=(), mixing=False, classes=5, size=16):
    return SetupContext(model, "tiny", classes, (3, size, size), torch.arange(8) % classes, 2, CPU, mixing=mixing,
                        teachers=list(teachers), teacher_names=[f"t{k}" for k in range(len(teachers))])


# ============================================================================= MIX-KD
def test_registered():
    assert METHODS["mix_kd"] is MIXKD and METHODS["ca_mkd"] is CAMKD


def test_standardised_kl_matches_a_hand_computed_example():
    # student [0, 0, 2]: mean 2/3, Bessel variance (4/9 + 4/9 + 16/9) / 2 = 4/3
    # teacher [0, 3, 6]: mean 3, variance (9 + 0 + 9) / 2 = 9, so z_t / sigma_t = [0, 1, 2]
    s = 2 / math.sqrt(4 / 3)
    q = [1 / (2 + math.exp(s)), 1 / (2 + math.exp(s)), math.exp(s) / (2 + math.exp(s))]
    p = [math.exp(v) / (1 + math.e + math.e ** 2) for v in (0, 1, 2)]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(q[2])  # label 2, unmixed
    method = MIXKD(MIXKDOptions(gamma=1.0, alpha=1.0))
    batch = Batch.new(torch.zeros(1, 3, 2, 2), torch.tensor([2]))
    out = Outputs(torch.tensor([[0.0, 0.0, 2.0]]), others={"teacher": Outputs(torch.tensor([[0.0, 3.0, 6.0]]))})
    terms = method.losses(out, batch)
    assert terms["mixkd_kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["mixkd_ce"].item() == pytest.approx(ce, rel=1e-5)


def test_standardisation_removes_the_scale_and_shift_of_each_row():
    # teacher = 3 * student + 1 per row: after standardisation the distributions agree, KL = 0
    z_s = torch.randn(4, 7)
    out = Outputs(z_s, others={"teacher": Outputs(3 * z_s + 1)})
    kl = MIXKD().losses(out, Batch.new(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)))["mixkd_kl"]
    assert kl.abs().item() < 1e-6


def official_mixstd(z_s, z_t, soft_targets, gamma, alpha):
    """MIXSTDLoss as the official code computes it, re-derived with unbiased std and no epsilon."""
    n = z_s.shape[0]
    sig_s = torch.sqrt(((z_s - z_s.mean(1, keepdim=True)) ** 2).sum(1, keepdim=True) / (z_s.shape[1] - 1))
    sig_t = torch.sqrt(((z_t - z_t.mean(1, keepdim=True)) ** 2).sum(1, keepdim=True) / (z_t.shape[1] - 1))
    log_q = z_s / sig_s - torch.logsumexp(z_s / sig_s, 1, keepdim=True)
    p = torch.softmax(z_t / sig_t, 1)
    cls = gamma * (-(log_q * soft_targets)).sum() / n
    kd = alpha * (p * (p.log() - log_q)).sum() / n
    return cls, kd


def test_mixstd_loss_and_gradient_match_the_official_formula_on_mixed_rows():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (6,))
    batch = MIXKD(MIXKDOptions(unmixed_fraction=0.5)).extend(Batch.new(torch.zeros(6, 1, 2, 2, dtype=torch.uint8),
                                                                        labels))
    z_s, z_t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    z_ref = z_s.detach().clone().requires_grad_(True)
    terms = MIXKD().losses(Outputs(z_s, others={"teacher": Outputs(z_t)}), batch)
    lam = batch.mix.lam[:, None]
    soft = lam * F.one_hot(labels, 10) + (1 - lam) * F.one_hot(batch.mix.partner_labels, 10)
    cls, kd = official_mixstd(z_ref, z_t, soft, 0.1, 0.9)
    assert terms["mixkd_ce"].item() == pytest.approx(cls.item(), rel=1e-5)
    assert terms["mixkd_kl"].item() == pytest.approx(kd.item(), rel=1e-5)
    (terms["mixkd_ce"] + terms["mixkd_kl"]).backward()
    (cls + kd).backward()
    assert torch.allclose(z_s.grad, z_ref.grad, atol=1e-6)  # sigma_s is not detached, as in the official code


@pytest.mark.parametrize("sampling,low,high", [("official", 0.38, 0.44), ("exact", 0.0999, 0.1001)])
def test_partial_mixup_mixes_the_expected_fraction(sampling, low, high):
    torch.manual_seed(1)
    n = 20000
    lam = partial_mix_lam(n, 1.0, 0.9, sampling)
    mixed = (lam < 1).float().mean().item()
    # official: picks with replacement leave (1 - 1/n)^(0.9 n) ~ e^-0.9 = 0.41 of the rows unpicked
    assert low <= mixed <= high
    assert 0.45 < lam[lam < 1].mean().item() < 0.55  # Beta(1, 1) on the mixed rows


def test_full_mixup_when_no_row_is_kept_clean():
    torch.manual_seed(2)
    assert (partial_mix_lam(1000, 1.0, 0.0, "exact") < 1).all()


def test_extend_blends_each_row_with_a_partner_and_leaves_lam_one_rows_clean():
    torch.manual_seed(3)
    n = 64
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    batch = MIXKD(MIXKDOptions(sampling="exact")).extend(Batch.new(images, labels))
    mix = batch.mix
    assert mix.boxes is None and len(mix.lam) == n
    # partners are a permutation of the batch's own rows
    assert sorted(map(tuple, mix.partner_images.flatten(1).tolist())) == sorted(map(tuple, images.flatten(1).tolist()))
    clean = mix.lam == 1
    assert int((~clean).sum()) == n - int(0.9 * n)
    # the engine's blending: lam = 1 rows are exactly their own (augmented) image and their one-hot label
    inputs, partners = images.float() / 255, mix.partner_images.float() / 255
    mixed = apply_mix(inputs, partners, mix)
    assert torch.equal(mixed[clean], inputs[clean])
    assert torch.equal(batch.targets(10)[clean], F.one_hot(labels[clean], 10).float())
    lam = mix.lam[~clean][:, None, None, None]
    assert torch.allclose(mixed[~clean], lam * inputs[~clean] + (1 - lam) * partners[~clean])


def test_extend_mixes_only_the_loaders_rows_and_is_reproducible_from_the_seed():
    images, labels = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 1, 2, 2), torch.arange(6)
    batch = Batch.new(images[:4], labels[:4]).append("extra", images[4:], labels[4:], torch.full((2,), -1))
    draws = []
    for _ in range(2):
        torch.manual_seed(4)
        draws.append(MIXKD(MIXKDOptions(unmixed_fraction=0.0)).extend(Batch(**vars(batch))).mix)
    assert torch.equal(draws[0].lam, draws[1].lam) and torch.equal(draws[0].partner_labels, draws[1].partner_labels)
    mix = draws[0]
    assert (mix.lam[:4] < 1).all() and (mix.lam[4:] == 1).all()
    assert set(mix.partner_labels[:4].tolist()) == {0, 1, 2, 3}
    assert torch.equal(mix.partner_labels[4:], labels[4:])


def test_mix_kd_refuses_the_engines_mixing():
    model = nn.Linear(2, 2)
    with pytest.raises(UserError, match="data.mix"):
        MIXKD().setup(ctx(model, mixing=True))
    with pytest.raises(UserError, match="data.mix"):
        MethodStack([MIXKD()]).setup(ctx(model, mixing=True))
    MIXKD().setup(ctx(model))


def test_mix_kd_options_are_checked():
    with pytest.raises(UserError, match="method.sampling"):
        MIXKD(MIXKDOptions(sampling="approx"))
    with pytest.raises(UserError, match="method.unmixed_fraction"):
        MIXKD(MIXKDOptions(unmixed_fraction=1.5))


# ============================================================================= CA-MKD
class TinyBody(nn.Module):
    """Two conv stages (the first halves the map, keeps it or doubles it), pooling and ``fc``; no ``head``."""

    stages = ("layer1", "layer2")

    def __init__(self, width, classes=5, resize="pool"):
        super().__init__()
        scale = {"pool": nn.MaxPool2d(2), "keep": nn.Identity(), "up": nn.Upsample(scale_factor=2)}[resize]
        self.layer1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), scale)
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


class TinyNet(TinyBody):
    """The same with a ``head`` (everything after the last stage)."""

    def head(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class NoHead(nn.Module):
    stages = ("layer1",)

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 4, 1)
        self.classifier = nn.Linear(4, 5)

    def forward(self, x):
        return self.classifier(self.layer1(x).mean((2, 3)))


def setup_camkd(teachers, student=None, **options):
    torch.manual_seed(0)
    student = student or TinyNet(4)
    for t in teachers:
        t.eval()
    method = CAMKD(CAMKDOptions(**options))
    method.setup(ctx(student, teachers))
    return method, student


def tapped(model, path, x):
    with FeatureTaps(model, [path]) as taps:
        return model(x), {path: taps[path]}


def forward_all(method, student, teachers, x, labels):
    """What the engine does: the student's forward with its tap, each teacher's under inference_mode with its."""
    others = {}
    for k, (t, taps) in enumerate(zip(teachers, method.teacher_taps())):
        with torch.inference_mode():
            others[f"teacher{k + 1}"] = Outputs(*tapped(t, taps[0], x))
    return Outputs(*tapped(student, method.taps[0], x), others), Batch.new(x, labels)


def test_confidence_weights_sum_to_one_and_favour_the_teacher_with_lower_loss():
    # losses 0 and ln 3: softmax = [1/4, 3/4], so w = 1 - softmax = [3/4, 1/4]
    w = confidence_weights(torch.tensor([[0.0], [math.log(3.0)]]))
    assert torch.allclose(w[:, 0], torch.tensor([0.75, 0.25]))
    losses = torch.rand(3, 10) * 4
    w3 = confidence_weights(losses)
    assert torch.allclose(w3.sum(0), torch.ones(10))
    assert torch.equal(w3.argmax(0), losses.argmin(0)) and torch.equal(w3.argmin(0), losses.argmax(0))


@pytest.mark.parametrize("k", [2, 3])
def test_logit_term_equals_a_naive_loop_over_teachers_and_samples(k):
    torch.manual_seed(k)
    b, c, t = 5, 7, 4.0
    z_s, z_ts, y = torch.randn(b, c), [torch.randn(b, c) * 3 for _ in range(k)], torch.randint(0, c, (b,))
    total = 0.0
    for n in range(b):
        ce = [-math.log(torch.softmax(z[n], 0)[y[n]].item()) for z in z_ts]
        soft = [math.exp(v) / sum(math.exp(u) for u in ce) for v in ce]
        for j in range(k):
            w = (1 - soft[j]) / (k - 1)
            p, q = torch.softmax(z_ts[j][n] / t, 0), torch.softmax(z_s[n] / t, 0)
            total += w * t * t * (p * (p / q).log()).sum().item()
    assert weighted_kd(z_s, z_ts, y, t).item() == pytest.approx(total / (b * k), rel=1e-5)


@pytest.mark.parametrize("k", [2, 3])
def test_intermediate_term_equals_a_naive_loop_and_is_off_in_the_first_epoch(k):
    teachers = [TinyNet(3 + j) for j in range(k)]
    method, student = setup_camkd(teachers)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    out, batch = forward_all(method, student, teachers, x, y)
    method.start_epoch(0)
    assert method.losses(out, batch)["camkd_inter"].item() == 0.0
    method.start_epoch(1)
    terms = method.losses(out, batch)
    expected = 0.0
    with torch.no_grad():
        hs = [phi(out.features["layer2"]) for phi in method.adapters]  # all maps 8x8: no resize
        for n in range(4):
            ce = [F.cross_entropy(t.head(h[n:n + 1]), y[n:n + 1]).item() for t, h in zip(teachers, hs)]
            soft = [math.exp(v) / sum(math.exp(u) for u in ce) for v in ce]
            for j in range(k):
                f_t = out.teachers[j].features["layer2"][n]
                expected += (1 - soft[j]) / (k - 1) * ((hs[j][n] - f_t) ** 2).mean().item()
    assert terms["camkd_inter"].item() == pytest.approx(50.0 * expected / (4 * k), rel=1e-4)
    assert terms["camkd_ce"].item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-6)


def test_adapters_get_gradient_teachers_get_none():
    teachers = [TinyNet(3), TinyNet(6)]
    for t in teachers:
        t.requires_grad_(True)  # setup freezes them
    method, student = setup_camkd(teachers)
    method.start_epoch(1)
    out, batch = forward_all(method, student, teachers, torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    sum(method.losses(out, batch).values()).backward()
    assert all(p.grad is None for t in teachers for p in t.parameters())
    for phi in method.adapters:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in phi.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_intermediate_weights_pass_gradient_unless_detached():
    teachers = [TinyNet(3), TinyNet(5)]
    grads = []
    for detach in (False, True):
        method, student = setup_camkd(teachers, detach_inter_weights=detach)
        method.start_epoch(1)
        x, y = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 3])
        out, batch = forward_all(method, student, teachers, x, y)
        method.losses(out, batch)["camkd_inter"].backward()
        grads.append(method.adapters[0][0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_student_map_is_pooled_down_and_upsampled_to_each_teachers_size():
    small, large = TinyNet(3), TinyNet(4, resize="up")  # maps 8x8 and 32x32
    method, student = setup_camkd([small, large], student=TinyNet(4, resize="keep"))  # student map 16x16
    assert method.sizes == [(8, 8), (32, 32)]
    f = torch.randn(2, 8, 16, 16)
    # pooled: each output pixel is the mean of its 4x4 block (bilinear would average only 2x2 of it)
    assert torch.allclose(resize_to(f, (4, 4)), f.reshape(2, 8, 4, 4, 4, 4).mean((3, 5)), atol=1e-6)
    assert torch.allclose(resize_to(f, (32, 32)), F.interpolate(f, size=(32, 32), mode="bilinear"))
    method.start_epoch(1)
    out, batch = forward_all(method, student, [small, large], torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]))
    inter = method.losses(out, batch)["camkd_inter"]
    assert torch.isfinite(inter) and inter > 0


def test_teacher_head_falls_back_to_pooled_fc_and_refuses_models_without_either():
    fallback = [TinyBody(3), TinyNet(5)]
    method, _ = setup_camkd(fallback)
    h = torch.randn(2, 6, 8, 8)
    assert torch.allclose(method.heads[0](h), fallback[0].fc(h.mean((2, 3))))
    with pytest.raises(UserError, match="teacher t0 has no head"):
        setup_camkd([NoHead(), TinyNet(3)])


def test_ca_mkd_needs_two_teachers_and_refuses_mixing():
    with pytest.raises(UserError, match="at least 2 teachers"):
        setup_camkd([TinyNet(3)])
    assert CAMKD.teachers_needed == (2, None) and not CAMKD.supports_mixing
    with pytest.raises(UserError, match="data.mix"):
        MethodStack([CAMKD()]).setup(ctx(TinyNet(4), [TinyNet(3), TinyNet(3)], mixing=True))
