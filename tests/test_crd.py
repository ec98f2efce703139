"""CRD against hand-computed and independently re-derived values, and the properties its paper and
official code rely on: other-class negatives, memory updated after scoring, Z frozen, exact resume."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from selfdistill.distributed import Dist
from selfdistill.errors import UserError
from selfdistill.methods import Batch, Outputs, build_method
from selfdistill.methods import crd as crd_module
from selfdistill.methods.base import SetupContext
from selfdistill.methods.crd import CRD, CRDOptions, contrast_scores, dense_scoring, nce_loss

N, C, K, DIM = 40, 4, 8, 8
LABELS = torch.arange(N) % C
FEATURE = "fc:input"


class Tiny(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Linear(3, width)
        self.fc = nn.Linear(width, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.body(x)))


def make(labels=LABELS, seed=0, world=Dist(), **options) -> CRD:
    torch.manual_seed(seed)
    method = CRD(CRDOptions(**{"nce_k": K, "feat_dim": DIM, **options}))
    method.setup(SetupContext(Tiny(6), "tiny", C, (3, 1, 1), labels, 1, torch.device("cpu"), world,
                              teachers=[Tiny(10)]))
    return method


def step_inputs(idx, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    rows = len(idx)
    f_s = torch.randn(rows, 6, generator=g).requires_grad_(grad)
    f_t = torch.randn(rows, 10, generator=g).requires_grad_(grad)
    z_s = torch.randn(rows, C, generator=g).requires_grad_(grad)
    z_t = torch.randn(rows, C, generator=g).requires_grad_(grad)
    batch = Batch.new(torch.zeros(rows, 3), LABELS[idx.clamp_min(0)], idx)
    out = Outputs(z_s, {FEATURE: f_s}, others={"teacher": Outputs(z_t, {FEATURE: f_t})})
    return out, batch


def reference_nce(scores, z, n):
    """The official ContrastLoss, written out per score: P = s / Z, Pn = 1 / N, eps = 1e-7."""
    total = 0.0
    for row in scores.tolist():
        p = [s / float(z) for s in row]
        m, pn = len(p) - 1, 1.0 / n
        total -= math.log(p[0] / (p[0] + m * pn + 1e-7))
        total -= sum(math.log(m * pn / (q + m * pn + 1e-7)) for q in p[1:])
    return total / len(scores)


def test_nce_loss_matches_hand_computation():
    # K = 2, N = 10: noise K/N = 0.2; eps = 1e-7 is negligible here
    p = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.3, 0.0]])
    row1 = -(math.log(0.5 / 0.7) + math.log(0.2 / 0.3) + math.log(0.2 / 0.4))
    row2 = -(math.log(0.3 / 0.5) + math.log(0.2 / 0.5) + math.log(0.2 / 0.2))
    assert nce_loss(p, 10).item() == pytest.approx((row1 + row2) / 2, rel=1e-5)
    scores = torch.rand(5, 9) * 3
    assert nce_loss(scores / 2.5, 40).item() == pytest.approx(reference_nce(scores, 2.5, 40), rel=1e-5)


@pytest.mark.parametrize("distinct", [True, False])
def test_exact_negatives_come_only_from_other_classes_and_cover_them(distinct):
    labels = torch.tensor([0] * 5 + [1] * 15 + [2] * 8 + [3] * 12)  # uneven classes
    method = make(labels, distinct_negatives=distinct)
    idx = torch.tensor([0, 7, 22, 39]).repeat(200)
    contrast = method.sampler(idx, torch.Generator().manual_seed(1))
    assert contrast.shape == (len(idx), K + 1)
    assert torch.equal(contrast[:, 0], idx)
    negatives = contrast[:, 1:]
    assert (labels[negatives] != labels[idx][:, None]).all()
    for anchor in (0, 7, 22, 39):
        seen = set(negatives[idx == anchor].flatten().tolist())
        assert seen == set(torch.nonzero(labels != labels[anchor]).flatten().tolist())
    if distinct:
        assert all(len(set(row)) == K for row in negatives.tolist())


def test_relax_positives_share_the_class_and_vary():
    method = make(mode="relax")
    idx = torch.arange(N).repeat(20)
    contrast = method.sampler(idx, torch.Generator().manual_seed(2))
    assert (LABELS[contrast[:, 0]] == LABELS[idx]).all()
    assert (contrast[:, 0] != idx).any()
    assert (LABELS[contrast[:, 1:]] != LABELS[idx][:, None]).all()


def test_k_is_clamped_to_the_smallest_other_class_pool():
    method = make(nce_k=16384)
    assert method.k == N - N // C
    out, batch = step_inputs(torch.arange(5), 0)
    assert torch.isfinite(method.losses(out, batch)["crd_nce"])
    with pytest.raises(UserError, match="two classes"):
        make(torch.zeros(N, dtype=torch.long))


@pytest.mark.parametrize("feat_dim", [DIM, 2 * DIM])  # bank rows gathered; all dot products (dense)
def test_loss_is_the_nce_of_scores_against_the_memory_before_the_update(feat_dim):
    assert dense_scoring(N, K, feat_dim) == (feat_dim == 2 * DIM)
    method = make(feat_dim=feat_dim)
    drawn = []
    sampler = method.sampler
    method.sampler = lambda idx, g: drawn.append(sampler(idx, g)) or drawn[-1]
    z = None
    for step, idx in enumerate([torch.arange(6), torch.tensor([6, 7, -1, 8, 9]), torch.tensor([3, 11, 12])]):
        out, batch = step_inputs(idx, step)
        memory_s, memory_t = method.memory_s.clone(), method.memory_t.clone()
        terms = method.losses(out, batch)
        assert torch.equal(method.memory_s, memory_s) and torch.equal(method.memory_t, memory_t)  # scored first
        valid = idx >= 0  # the row without a training index takes no part
        contrast = drawn[-1][valid]  # every row is drawn for (fixed shapes); the others are masked out
        assert torch.equal(contrast[:, 0], idx[valid])
        with torch.no_grad():
            v_s = F.normalize(method.embed_s.linear(out.features[FEATURE][valid]), dim=1)
            v_t = F.normalize(method.embed_t.linear(out.teachers[0].features[FEATURE][valid]), dim=1)
        s = torch.exp((memory_t[contrast] * v_s[:, None, :]).sum(2) / 0.07)
        t = torch.exp((memory_s[contrast] * v_t[:, None, :]).sum(2) / 0.07)
        if z is None:  # set on the first batch, then frozen
            z = (s.mean().item() * N, t.mean().item() * N)
        assert method.z.tolist() == pytest.approx(z, rel=1e-6)
        expected = 0.8 * (reference_nce(s, z[0], N) + reference_nce(t, z[1], N))
        assert terms["crd_nce"].item() == pytest.approx(expected, rel=1e-4)
        assert terms["crd_ce"].item() == pytest.approx(F.cross_entropy(out.logits, batch.labels).item(), rel=1e-6)
        assert terms["crd_kd"].item() == 0.0
        method.update(out, batch)


def test_dense_and_gathered_scores_agree():
    assert dense_scoring(50000, 16384, 128) and not dense_scoring(1_281_167, 16384, 128)  # CIFAR, ImageNet
    memory = F.normalize(torch.randn(30, 16), dim=1)
    contrast = torch.randint(0, 30, (5, 7))
    v = F.normalize(torch.randn(5, 16), dim=1).requires_grad_(True)
    by_rows = torch.stack([torch.stack([torch.exp(memory[j] @ v[b] / 0.07) for j in contrast[b]]) for b in range(5)])
    gathered, dense = (contrast_scores(memory, contrast, v, 0.07, d) for d in (False, True))
    assert torch.allclose(gathered, by_rows, rtol=1e-5) and torch.allclose(dense, by_rows, rtol=1e-5)
    grad_gathered, = torch.autograd.grad(gathered.log().sum(), v)
    grad_dense, = torch.autograd.grad(dense.log().sum(), v)
    assert torch.allclose(grad_gathered, grad_dense, atol=1e-4)


def test_update_moves_only_the_positive_rows_and_renormalises():
    method = make(mode="relax")
    idx = torch.tensor([4, 9, -1, 4, 17])  # index 4 twice: the last row's embedding counts
    out, batch = step_inputs(idx, 3)
    before_s, before_t = method.memory_s.clone(), method.memory_t.clone()
    method.losses(out, batch)
    method.update(out, batch)
    changed = set(torch.nonzero((method.memory_s != before_s).any(1)).flatten().tolist())
    assert changed == {4, 9, 17}
    assert set(torch.nonzero((method.memory_t != before_t).any(1)).flatten().tolist()) == changed
    with torch.no_grad():
        v_s = F.normalize(method.embed_s.linear(out.features[FEATURE]), dim=1)
        v_t = F.normalize(method.embed_t.linear(out.teachers[0].features[FEATURE]), dim=1)
    for row, i in ((1, 9), (3, 4), (4, 17)):
        for bank, before, v in ((method.memory_s, before_s, v_s), (method.memory_t, before_t, v_t)):
            mixed = 0.5 * before[i] + 0.5 * v[row]
            assert torch.allclose(bank[i], mixed / mixed.norm(), atol=1e-6)
            assert bank[i].norm().item() == pytest.approx(1.0, abs=1e-6)


def test_banks_start_uniform_in_the_official_range():
    method = make(feat_dim=12)
    bound = 1 / math.sqrt(12 / 3)
    for bank in (method.memory_s, method.memory_t):
        assert bank.shape == (N, 12) and bank.abs().max() <= bound and bank.abs().max() > 0.9 * bound


def _run(method, steps):
    results = []
    for step, idx in steps:
        out, batch = step_inputs(idx, step)
        results.append({k: v.detach() for k, v in method.losses(out, batch).items()})
        method.update(out, batch)
    return results


def test_state_round_trip_gives_identical_next_steps_and_keeps_z():
    steps = [(s, torch.randperm(N, generator=torch.Generator().manual_seed(s))[:7]) for s in range(5)]
    first = make(seed=0, mode="relax")
    _run(first, steps[:2])
    state = first.state_dict()
    heads = {k: m.state_dict() for k, m in first.modules().items()}
    second = make(seed=1, mode="relax")  # other heads, banks and no Z until restored
    for k, m in second.modules().items():
        m.load_state_dict(heads[k])
    second.load_state_dict(state)
    assert torch.equal(second.z, first.z)
    z = first.z.clone()
    a, b = _run(first, steps[2:]), _run(second, steps[2:])
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert torch.equal(first.memory_s, second.memory_s) and torch.equal(first.memory_t, second.memory_t)
    assert torch.equal(first.z, z)  # frozen after the first batch


def test_gradient_reaches_both_heads_and_the_student_but_not_the_teacher():
    method = make(kd_weight=1.0)
    out, batch = step_inputs(torch.arange(6), 0, grad=True)
    terms = method.losses(out, batch)
    assert terms["crd_kd"].item() > 0
    terms["crd_nce"].backward(retain_graph=True)
    assert out.features[FEATURE].grad.abs().sum() > 0
    for head in (method.embed_s, method.embed_t):
        assert head.linear.weight.grad.abs().sum() > 0
    sum(terms.values()).backward()
    teacher = out.teachers[0]
    assert teacher.features[FEATURE].grad is None and teacher.logits.grad is None
    assert out.logits.grad.abs().sum() > 0


def test_teacher_outputs_made_under_inference_mode_train():
    method = make(kd_weight=1.0)
    out, batch = step_inputs(torch.arange(6), 0)
    with torch.inference_mode():
        teacher = Outputs(out.teachers[0].logits.clone(), {FEATURE: out.teachers[0].features[FEATURE].clone()})
    out.others["teacher"] = teacher
    sum(method.losses(out, batch).values()).backward()
    assert method.embed_t.linear.weight.grad is not None


def test_memory_that_does_not_fit_is_refused_with_the_numbers(monkeypatch):
    monkeypatch.setattr(crd_module, "available_memory", lambda device: 1000)
    with pytest.raises(UserError) as banks:
        make()
    message = str(banks.value)
    assert "\n" not in message and f"2 x {N} x {DIM}" in message and "method.feat_dim" in message
    monkeypatch.setattr(crd_module, "available_memory", lambda device: 2 * N * DIM * 4 + 100)
    method = make()  # the banks fit; the first step's scores do not
    out, batch = step_inputs(torch.arange(6), 0)
    with pytest.raises(UserError) as step:
        method.losses(out, batch)
    message = str(step.value)
    assert "\n" not in message and f"{K + 1} x {DIM}" in message
    assert "method.nce_k" in message and "data.batch_size" in message
    monkeypatch.setattr(crd_module, "available_memory", lambda device: None)  # unknown: no check
    make().losses(out, batch)


def test_registered_with_its_interface():
    stack = build_method({"name": "crd", "kd_weight": 1.0})
    assert stack.teachers_needed == (1, 1) and stack.term_names == ("crd_ce", "crd_kd", "crd_nce")
    method = make()
    assert method.taps == (FEATURE,) and method.teacher_taps() == [(FEATURE,)]
    assert set(method.modules()) == {"embed_s", "embed_t"} and not CRD.supports_mixing
    with pytest.raises(UserError, match="method.mode"):
        build_method({"name": "crd", "mode": "loose"})


RANK_ROWS = [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 6, 33])]  # ranks may hold different numbers of rows


def _rank_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        method = make(world=Dist(rank, 2))
        out, batch = step_inputs(RANK_ROWS[rank], rank)
        method.losses(out, batch)
        method.update(out, batch)
        torch.save({"memory_s": method.memory_s, "memory_t": method.memory_t, "z": method.z}, f"{folder}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_keep_identical_banks_updated_with_every_ranks_rows(tmp_path):
    mp.spawn(_rank_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for key in ("memory_s", "memory_t", "z"):
        assert torch.equal(ranks[0][key], ranks[1][key])
    reference = make()  # same seed: the banks and heads every rank started from
    for rank, idx in enumerate(RANK_ROWS):
        out, _ = step_inputs(idx, rank)
        with torch.no_grad():
            v_s = F.normalize(reference.embed_s.linear(out.features[FEATURE]), dim=1)
        mixed = 0.5 * reference.memory_s[idx] + 0.5 * v_s
        assert torch.allclose(ranks[0]["memory_s"][idx], F.normalize(mixed, dim=1), atol=1e-6)
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[torch.cat(RANK_ROWS)] = False
    assert torch.equal(ranks[0]["memory_t"][untouched], reference.memory_t[untouched])
