"""The teacher -> student methods (KD, DKD, DIST, NKD, SP): hand-computed values, the official code's
formulas re-derived independently, and the properties the papers rely on."""

import math

import pytest
import torch
import torch.nn.functional as F

from hand import kl, softmax
from selfdistill.data.mixing import Mix
from selfdistill.errors import UserError
from selfdistill.losses import dist_parts, dkd_parts, kd_kl, nkd_parts, sp_loss
from selfdistill.methods import Batch, MethodStack, Outputs, build_method, method_options
from selfdistill.methods.base import SetupContext
from selfdistill.methods.dist import DIST
from selfdistill.methods.dkd import DKD, DKDOptions
from selfdistill.methods.kd import KD
from selfdistill.methods.nkd import NKD, NKDOptions
from selfdistill.methods.sp import SP, SPOptions
from selfdistill.models import FeatureTaps, build_model

STUDENT = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]]
TEACHER = [[2.0, 0.5, 0.0], [0.0, 0.0, 1.0]]
LABELS = [0, 1]


def pearson_list(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)))


def batch_of(labels):
    labels = torch.tensor(labels)
    return Batch.new(torch.zeros(len(labels), 1, 4, 4), labels)


def with_teachers(student, *teachers, features=None, teacher_features=None):
    roles = ["teacher"] if len(teachers) == 1 else [f"teacher{k + 1}" for k in range(len(teachers))]
    others = {role: Outputs(z, teacher_features or {}) for role, z in zip(roles, teachers)}
    return Outputs(student, features or {}, others)


def random_pair(b=6, c=7, scale=3.0):
    return torch.randn(b, c) * scale, torch.randn(b, c) * scale, torch.randint(0, c, (b,))


# ----------------------------------------------------------------------------- KD
def test_kd_method_matches_hand_computation():
    t = 2.0
    expected_kl = t * t * sum(kl(softmax(zt, t), softmax(zs, t)) for zs, zt in zip(STUDENT, TEACHER)) / 2
    expected_ce = -sum(math.log(softmax(zs)[y]) for zs, y in zip(STUDENT, LABELS)) / 2
    method = build_method({"name": "kd", "temperature": t})
    terms = method.losses(with_teachers(torch.tensor(STUDENT), torch.tensor(TEACHER)), batch_of(LABELS))
    assert set(terms) == {"kd_ce", "kd_kl"}
    assert terms["kd_ce"].item() == pytest.approx(0.1 * expected_ce, rel=1e-6)
    assert terms["kd_kl"].item() == pytest.approx(0.9 * expected_kl, rel=1e-6)


def test_kd_ensemble_distils_the_mean_of_the_teachers_probabilities():
    t = 3.0
    second = [[0.0, 1.0, 0.0], [1.5, -1.0, 0.0]]
    expected = 0.0
    for zs, z1, z2 in zip(STUDENT, TEACHER, second):
        mean = [(a + b) / 2 for a, b in zip(softmax(z1, t), softmax(z2, t))]
        expected += kl(mean, softmax(zs, t))
    expected *= t * t / 2
    method = KD(KD.Options(temperature=t, kd_weight=1.0))
    out = with_teachers(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(second))
    assert method.losses(out, batch_of(LABELS))["kd_kl"].item() == pytest.approx(expected, rel=1e-6)
    # one teacher: the same as Hinton's kd_kl on its logits
    s, z, _ = random_pair()
    single = method.losses(with_teachers(s, z), batch_of([0] * 6))["kd_kl"]
    assert torch.allclose(single, kd_kl(s, z, t), rtol=1e-5)


def test_kd_cross_entropy_skips_unsupervised_rows_and_follows_mixed_targets_while_kl_covers_every_row():
    s, z, _ = random_pair(b=5, c=4)
    batch = batch_of([0, 1, 2]).append("extra", torch.zeros(2, 1, 4, 4), torch.tensor([3, 3]),
                                       torch.tensor([-1, -1]), supervised=False)
    terms = KD().losses(with_teachers(s, z), batch)
    assert torch.allclose(terms["kd_ce"], 0.1 * F.cross_entropy(s[:3], torch.tensor([0, 1, 2])))
    assert torch.allclose(terms["kd_kl"], 0.9 * kd_kl(s, z, 4.0), rtol=1e-5)
    mixed = batch_of([0, 1])
    mixed.mix = Mix(torch.zeros(2, 1, 4, 4), torch.tensor([1, 3]), torch.tensor([0.7, 0.4]))
    target = torch.tensor([[0.7, 0.3, 0, 0], [0, 0.4, 0, 0.6]])
    terms = KD().losses(with_teachers(s[:2], z[:2]), mixed)
    assert torch.allclose(terms["kd_ce"], 0.1 * F.cross_entropy(s[:2], target))


# ----------------------------------------------------------------------------- DKD
def official_dkd(zs, zt, y, alpha, beta, t):
    """mdistiller's dkd_loss as written there: masked sums, plain log, the -1000 trick."""
    gt = torch.zeros_like(zs).scatter_(1, y[:, None], 1).bool()
    other = ~gt
    ps, pt = F.softmax(zs / t, dim=1), F.softmax(zt / t, dim=1)
    bs = torch.cat([(ps * gt).sum(1, keepdim=True), (ps * other).sum(1, keepdim=True)], dim=1)
    bt = torch.cat([(pt * gt).sum(1, keepdim=True), (pt * other).sum(1, keepdim=True)], dim=1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * t ** 2 / len(y)
    pt2 = F.softmax(zt / t - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(zs / t - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * t ** 2 / len(y)
    return alpha * tckd + beta * nckd


def test_dkd_parts_match_hand_computation():
    t = 2.0
    tckd = nckd = 0.0
    for zs, zt, y in zip(STUDENT, TEACHER, LABELS):
        ps, pt = softmax(zs, t), softmax(zt, t)
        tckd += kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest_s = softmax([v for i, v in enumerate(zs) if i != y], t)
        rest_t = softmax([v for i, v in enumerate(zt) if i != y], t)
        nckd += kl(rest_t, rest_s)
    got = dkd_parts(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), t)
    assert got[0].item() == pytest.approx(t * t * tckd / 2, rel=1e-6)
    assert got[1].item() == pytest.approx(t * t * nckd / 2, rel=1e-6)


def test_dkd_equals_the_official_formula_on_ordinary_logits():
    for t, alpha, beta in ((4.0, 1.0, 8.0), (1.0, 0.5, 2.0)):
        zs, zt, y = random_pair(b=8, c=10)
        tckd, nckd = dkd_parts(zs, zt, y, t)
        assert torch.allclose(alpha * tckd + beta * nckd, official_dkd(zs, zt, y, alpha, beta, t), rtol=1e-4)


def test_dkd_stays_finite_where_the_official_log_of_sums_does_not():
    zs = torch.tensor([[400.0, 0.0, 0.0], [0.0, 300.0, 0.0]], requires_grad=True)  # confident student
    zt = torch.tensor([[500.0, -100.0, 0.0], [0.0, 0.0, 400.0]])  # confident teacher
    y = torch.tensor([0, 1])
    assert not torch.isfinite(official_dkd(zs.detach(), zt, y, 1.0, 8.0, 1.0))
    tckd, nckd = dkd_parts(zs, zt, y, 1.0)
    total = tckd + 8 * nckd
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(zs.grad).all()


def test_kd_is_tckd_plus_teacher_non_target_mass_times_nckd():
    zs, zt, y = random_pair(b=6, c=9, scale=2.0)
    t = 3.0
    p_target = F.softmax(zt / t, dim=1).gather(1, y[:, None]).squeeze(1)
    per_row = []
    for n in range(len(y)):
        tckd, nckd = dkd_parts(zs[n:n + 1], zt[n:n + 1], y[n:n + 1], t)
        per_row.append(tckd + (1 - p_target[n]) * nckd)
    assert torch.allclose(torch.stack(per_row).mean(), kd_kl(zs, zt, t), rtol=1e-4)


def test_dkd_warmup_weight_per_epoch():
    dkd = DKD()  # warm-up of 20 epochs, epochs counted from 1 as in mdistiller
    zs, zt, y = random_pair(b=4, c=5)
    batch = batch_of(y.tolist())
    tckd, nckd = dkd_parts(zs, zt, y, 4.0)
    for epoch, weight in ((0, 1 / 20), (9, 10 / 20), (18, 19 / 20), (19, 1.0), (150, 1.0)):
        dkd.start_epoch(epoch)  # 0-based, as the engine counts
        terms = dkd.losses(with_teachers(zs, zt), batch)
        assert terms["dkd_tckd"].item() == pytest.approx(weight * tckd.item(), rel=1e-6)
        assert terms["dkd_nckd"].item() == pytest.approx(weight * 8 * nckd.item(), rel=1e-6)
        assert torch.allclose(terms["dkd_ce"], F.cross_entropy(zs, y))  # the CE is never warmed up
    no_warmup = DKD(DKDOptions(warmup_epochs=0))
    no_warmup.start_epoch(0)
    assert torch.allclose(no_warmup.losses(with_teachers(zs, zt), batch)["dkd_tckd"], tckd)


def test_dkd_and_nkd_cover_only_labelled_rows():
    zs, zt, _ = random_pair(b=5, c=4)
    y = torch.tensor([0, 1, 2])
    batch = batch_of(y.tolist()).append("extra", torch.zeros(2, 1, 4, 4), torch.tensor([0, 0]),
                                        torch.tensor([-1, -1]), supervised=False)
    dkd = DKD(DKDOptions(warmup_epochs=0)).losses(with_teachers(zs, zt), batch)
    assert torch.allclose(dkd["dkd_nckd"], 8 * dkd_parts(zs[:3], zt[:3], y, 4.0)[1])
    nkd = NKD().losses(with_teachers(zs, zt), batch)
    assert torch.allclose(nkd["nkd_target"], nkd_parts(zs[:3], zt[:3], y, 3.0)[0])


# ----------------------------------------------------------------------------- DIST
def official_dist(zs, zt, beta, gamma, t):
    """DIST_KD's loss as written there: cosine of centred rows with eps, rows then columns, tau^2."""
    def cosine(a, b, eps=1e-8):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def inter(a, b):
        return 1 - cosine(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)).mean()

    ys, yt = (zs / t).softmax(dim=1), (zt / t).softmax(dim=1)
    return beta * t ** 2 * inter(ys, yt) + gamma * t ** 2 * inter(ys.transpose(0, 1), yt.transpose(0, 1))


def test_dist_parts_match_hand_computation():
    t = 2.0
    student, teacher = [*STUDENT, [0.0, -1.0, 1.0]], [*TEACHER, [1.0, 1.0, -2.0]]  # 3 rows: columns vary
    ys = [softmax(z, t) for z in student]
    yt = [softmax(z, t) for z in teacher]
    inter = 1 - sum(pearson_list(a, b) for a, b in zip(ys, yt)) / 3
    intra = 1 - sum(pearson_list([r[c] for r in ys], [r[c] for r in yt]) for c in range(3)) / 3
    assert intra > 0.1
    got = dist_parts(torch.tensor(student), torch.tensor(teacher), t)
    assert got[0].item() == pytest.approx(t * t * inter, rel=1e-5)
    assert got[1].item() == pytest.approx(t * t * intra, rel=1e-5)


def test_dist_method_equals_the_official_formula_with_its_effective_weights():
    zs, zt, y = random_pair(b=8, c=10)
    terms = DIST().losses(with_teachers(zs, zt), batch_of(y.tolist()))
    # the official CIFAR setting: DIST(beta=1, gamma=1, tau=4) times kd_loss_weight 2
    assert torch.allclose(terms["dist_inter"] + terms["dist_intra"], 2 * official_dist(zs, zt, 1.0, 1.0, 4.0),
                          rtol=1e-5)
    assert torch.allclose(terms["dist_ce"], F.cross_entropy(zs, y))
    assert DIST.min_batch_size == 2


def test_dist_is_zero_for_a_teacher_that_agrees_up_to_relations():
    zs = torch.randn(5, 6)
    inter, intra = dist_parts(zs, zs.clone(), 1.0)
    assert inter.abs() < 1e-5 and intra.abs() < 1e-5


# ----------------------------------------------------------------------------- NKD
def arxiv_nkd(zs, zt, y, gamma, t):
    """The arXiv-era NKD as the official code forms it: the target term at T = 1, and the non-target
    distributions as temperature softmax with the target masked out, renormalised by 1 - p_target."""
    gt = torch.zeros_like(zs).scatter_(1, y[:, None], 1).bool()
    s_t = F.softmax(zs, dim=1)[gt]
    t_t = F.softmax(zt, dim=1)[gt]
    loss_t = -(t_t * torch.log(s_t)).mean()
    ps, pt = F.softmax(zs / t, dim=1), F.softmax(zt / t, dim=1)
    ns = (ps * ~gt) / (1 - ps[gt])[:, None]
    nt = (pt * ~gt) / (1 - pt[gt])[:, None]
    log_ns = torch.log(ns + gt.float())  # log 1 = 0 at the target, whose weight nt is 0 anyway
    return loss_t - gamma * t ** 2 * (nt * log_ns).sum(1).mean()


def test_nkd_parts_match_hand_computation():
    t = 2.0
    target = non_target = 0.0
    for zs, zt, y in zip(STUDENT, TEACHER, LABELS):
        target -= softmax(zt)[y] * math.log(softmax(zs)[y])
        rest_s = softmax([v for i, v in enumerate(zs) if i != y], t)
        rest_t = softmax([v for i, v in enumerate(zt) if i != y], t)
        non_target -= sum(a * math.log(b) for a, b in zip(rest_t, rest_s))
    got = nkd_parts(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), t)
    assert got[0].item() == pytest.approx(target / 2, rel=1e-6)
    assert got[1].item() == pytest.approx(t * t * non_target / 2, rel=1e-6)


def test_nkd_method_equals_the_official_formula_plus_cross_entropy():
    zs, zt, y = random_pair(b=8, c=10, scale=2.0)
    for options in (NKDOptions(), NKDOptions(temperature=1.0, gamma=1.5)):
        terms = NKD(options).losses(with_teachers(zs, zt), batch_of(y.tolist()))
        expected = F.cross_entropy(zs, y) + arxiv_nkd(zs, zt, y, options.gamma, options.temperature)
        assert torch.allclose(sum(terms.values()), expected, rtol=1e-4)
        assert torch.allclose(terms["nkd_ce"], F.cross_entropy(zs, y))


# ----------------------------------------------------------------------------- SP
def official_sp(fs, ft):
    """RepDistiller's similarity loss as written there: Gram, row-normalise, squared difference / B^2."""
    b = fs.shape[0]
    gs = torch.nn.functional.normalize(torch.mm(fs.view(b, -1), fs.view(b, -1).t()))
    gt = torch.nn.functional.normalize(torch.mm(ft.view(b, -1), ft.view(b, -1).t()))
    diff = gt - gs
    return (diff * diff).view(-1, 1).sum(0)[0] / (b * b)


def test_sp_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # Gram [[1, 1], [1, 2]]
    teacher = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0]])  # Gram [[5, 2], [2, 1]]
    gs = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    gt = [[5 / math.sqrt(29), 2 / math.sqrt(29)], [2 / math.sqrt(5), 1 / math.sqrt(5)]]
    expected = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    assert sp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_sp_loss_equals_the_official_formula_on_feature_maps_of_different_widths():
    fs, ft = torch.randn(6, 8, 3, 3), torch.randn(6, 16, 2, 2)
    assert torch.allclose(sp_loss(fs, ft), official_sp(fs, ft), rtol=1e-5)
    assert sp_loss(ft, ft.clone()).abs() < 1e-7


def sp_ctx(teacher_name="resnet8"):
    model = build_model("cnn", 10, 1, 12)
    teacher = build_model(teacher_name, 10, 1, 12).eval().requires_grad_(False)
    return SetupContext(model, "cnn", 10, (1, 12, 12), torch.arange(20) % 10, 4, torch.device("cpu"),
                        teachers=[teacher], teacher_names=[teacher_name])


def test_sp_taps_the_last_stages_or_the_chosen_layers_and_refuses_missing_ones():
    sp = SP()
    assert sp.taps == () and sp.teacher_taps() == []
    sp.setup(sp_ctx())
    assert sp.taps == ("layer3",) and sp.teacher_taps() == [("layer3",)]
    chosen = SP(SPOptions(student_layer="layer2", teacher_layer="layer1:input"))
    chosen.setup(sp_ctx())
    assert chosen.taps == ("layer2",) and chosen.teacher_taps() == [("layer1:input",)]
    stack = build_method({"name": "sp+dlb"})
    stack.setup(sp_ctx())
    assert stack.taps == ("layer3",) and stack.teacher_taps() == [("layer3",)]
    with pytest.raises(UserError, match="method.teacher_layer='layer9'.*layer1, layer2, layer3"):
        SP(SPOptions(teacher_layer="layer9")).setup(sp_ctx())
    ctx = sp_ctx()
    ctx.teachers = []
    with pytest.raises(UserError, match="needs a teacher"):
        SP().setup(ctx)


def test_sp_method_on_real_taps_trains_the_student_only():
    ctx = sp_ctx()
    sp = SP()
    sp.setup(ctx)
    x, y = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    student_taps, teacher_taps = FeatureTaps(ctx.model, list(sp.taps)), FeatureTaps(ctx.teachers[0],
                                                                                    list(sp.teacher_taps()[0]))
    logits = ctx.model(x)
    with torch.inference_mode():  # as the engine forwards teachers
        teacher_logits = ctx.teachers[0](x)
    out = with_teachers(logits, teacher_logits, features=dict(student_taps.features),
                        teacher_features=dict(teacher_taps.features))
    terms = sp.losses(out, batch_of(y.tolist()))
    f_s, f_t = student_taps.features["layer3"], teacher_taps.features["layer3"]
    assert torch.allclose(terms["sp"], 3000 * official_sp(f_s, f_t.clone()), rtol=1e-5)
    assert torch.allclose(terms["sp_ce"], F.cross_entropy(logits, y))
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.model.parameters())
    assert all(p.grad is None for p in ctx.teachers[0].parameters())


# ----------------------------------------------------------------------------- every method
LOGIT_METHODS = [KD(), DKD(), DIST(), NKD()]


@pytest.mark.parametrize("method", LOGIT_METHODS, ids=lambda m: m.name)
def test_no_gradient_reaches_the_teacher_and_the_student_gets_one(method):
    zs = torch.randn(6, 5, requires_grad=True)
    zt = torch.randn(6, 5, requires_grad=True)
    terms = method.losses(with_teachers(zs, zt), batch_of([0, 1, 2, 3, 4, 0]))
    assert set(terms) == set(method.term_names) and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert zt.grad is None and zs.grad.abs().sum() > 0


def test_losses_never_put_gradient_into_teacher_inputs():
    zs, zt, y = random_pair()
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    sum((*dkd_parts(zs, zt, y), *dist_parts(zs, zt), *nkd_parts(zs, zt, y), sp_loss(zs, zt))).backward()
    assert zt.grad is None and zs.grad.abs().sum() > 0


@pytest.mark.parametrize("method", LOGIT_METHODS, ids=lambda m: m.name)
def test_teacher_logits_made_in_inference_mode_are_usable(method):
    zs = torch.randn(4, 5, requires_grad=True)
    with torch.inference_mode():
        zt = torch.randn(4, 5)
    sum(method.losses(with_teachers(zs, zt), batch_of([0, 1, 2, 3])).values()).backward()
    assert zs.grad.abs().sum() > 0


def test_methods_declare_teachers_task_loss_and_mixing():
    assert KD.teachers_needed == (1, None)
    assert all(cls.teachers_needed == (1, 1) for cls in (DKD, DIST, NKD, SP))
    assert all(cls.provides_task_loss for cls in (KD, DKD, DIST, NKD, SP))
    ctx = sp_ctx()
    ctx.mixing = True
    for name in ("dkd", "nkd"):
        with pytest.raises(UserError, match=f"data.mix: {name} cannot"):
            build_method({"name": name}).setup(ctx)
    for name in ("kd", "dist", "sp"):
        build_method({"name": name}).setup(ctx)
    with pytest.raises(UserError, match="each replace the cross-entropy"):
        build_method({"name": "kd+dkd"})


@pytest.mark.parametrize("name, key, value", [
    ("kd", "temperature", 0), ("kd", "ce_weight", -1), ("dkd", "warmup_epochs", -1), ("dkd", "beta", -2),
    ("dist", "gamma", -1), ("nkd", "temperature", -3), ("sp", "gamma", -1)])
def test_bad_options_name_the_field(name, key, value):
    with pytest.raises(UserError, match=f"method.{key}="):
        method_options(name, {key: value})


def test_kd_with_dlb_distils_the_teacher_on_the_replayed_rows_too():
    stack = build_method({"name": "kd+dlb"})
    assert isinstance(stack, MethodStack) and stack.term_names == ("kd_ce", "kd_kl", "dlb_kl")
    first = stack.extend(batch_of([0, 1]))
    zs, zt = torch.randn(2, 3), torch.randn(2, 3)
    stack.losses(with_teachers(zs, zt), first)
    stack.update(with_teachers(zs, zt), first)
    second = stack.extend(batch_of([2, 0]))
    assert len(second) == 4  # two new rows and the two replayed ones
    zs, zt = torch.randn(4, 3), torch.randn(4, 3)
    terms = stack.losses(with_teachers(zs, zt), second)
    assert torch.allclose(terms["kd_kl"], 0.9 * kd_kl(zs, zt, 4.0), rtol=1e-5)
    assert torch.allclose(terms["kd_ce"], 0.1 * F.cross_entropy(zs, torch.tensor([2, 0, 0, 1])))
    assert terms["dlb_kl"] > 0
