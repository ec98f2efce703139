"""The online methods DML and SwitOKD: hand-computed terms, the switch rule on hand-made predictions,
which networks pause, and that no network's terms send gradient into another network's logits."""

import math

import pytest
import torch
import torch.nn as nn

import selfdistill.methods.switokd as switokd
from hand import kl, softmax
from selfdistill.data.mixing import Mix
from selfdistill.distributed import Dist
from selfdistill.errors import UserError
from selfdistill.methods import METHODS, Batch, Outputs, build_method
from selfdistill.methods.base import NetworkSpec, SetupContext
from selfdistill.methods.dml import DML
from selfdistill.methods.switokd import SwitOKD, expert_mode, switch_distances

STUDENT = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]]
PEER1 = [[2.0, 0.5, 0.0], [0.0, 0.0, 1.0]]
PEER2 = [[-1.0, 1.0, 0.0], [0.3, -0.2, 2.0]]
LABELS = [0, 1]


def mean_kl(target_logits, logits, t=1.0):
    """t^2 * KL(softmax(target/t) || softmax(logits/t)), averaged over the rows."""
    return t * t * sum(kl(softmax(a, t), softmax(b, t)) for a, b in zip(target_logits, logits)) / len(logits)


def l1(p, q):
    return sum(abs(a - b) for a, b in zip(p, q))


def context(model_name="resnet20", dist=None):
    return SetupContext(model=nn.Linear(3, 3), model_name=model_name, num_classes=3, input_shape=(1, 4, 4),
                        train_labels=torch.tensor(LABELS), epochs=1, device=torch.device("cpu"),
                        dist=dist or Dist())


def prepared(config, dist=None):
    """The method stack for ``config``, asked for its networks and set up with small stand-in modules."""
    stack = build_method(config)
    ctx = context(dist=dist)
    specs = stack.networks(ctx)
    ctx.networks = {spec.role: nn.Linear(3, 3) for spec in specs}
    stack.setup(ctx)
    return stack, specs


def batch_of(labels):
    labels = torch.tensor(labels)
    return Batch.new(torch.zeros(len(labels), 1, 4, 4), labels)


def leaves(*rows):
    return [torch.tensor(r, requires_grad=True) for r in rows]


def grad_size(term, wrt):
    """The gradient's largest entry (0 when the term does not reach ``wrt`` at all)."""
    (g,) = torch.autograd.grad(term, [wrt], retain_graph=True, allow_unused=True)
    return 0.0 if g is None else g.abs().max().item()


# ----------------------------------------------------------------------------- DML
def test_both_methods_are_registered():
    assert METHODS["dml"] is DML and METHODS["switokd"] is SwitOKD


def test_dml_default_cohort_is_one_peer_of_the_student_s_architecture():
    stack, specs = prepared({"name": "dml"})
    assert specs == [NetworkSpec("peer1", "resnet20")]
    assert set(stack.term_names) == {"ce", "dml_kl", "peer1_ce", "peer1_dml_kl"}
    assert stack.rounds == 1 and stack.paused(0) == frozenset()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dml_two_networks_match_hand_computation(reduction):
    stack, _ = prepared({"name": "dml", "reduction": reduction})
    z_s, z_1 = leaves(STUDENT, PEER1)
    terms = stack.losses(Outputs(z_s, others={"peer1": Outputs(z_1)}), batch_of(LABELS))
    assert set(terms) == {"ce", "dml_kl", "peer1_ce", "peer1_dml_kl"}
    assert terms["dml_kl"].item() == pytest.approx(mean_kl(PEER1, STUDENT), rel=1e-6)
    assert terms["peer1_dml_kl"].item() == pytest.approx(mean_kl(STUDENT, PEER1), rel=1e-6)
    # the stack's copy of the cross-entropy trains the peer on its own logits
    expected_peer_ce = -sum(math.log(softmax(z)[y]) for z, y in zip(PEER1, LABELS)) / 2
    assert terms["peer1_ce"].item() == pytest.approx(expected_peer_ce, rel=1e-6)
    assert grad_size(terms["peer1_ce"], z_s) == 0.0 and grad_size(terms["peer1_ce"], z_1) > 0


@pytest.mark.parametrize("reduction, scale", [("mean", 0.5), ("sum", 1.0)])
def test_dml_three_networks_average_or_sum_the_kl_to_each_other_peer(reduction, scale):
    t = 2.0
    stack, specs = prepared({"name": "dml", "peers": ["resnet8", "resnet14"], "reduction": reduction,
                             "temperature": t})
    assert specs == [NetworkSpec("peer1", "resnet8"), NetworkSpec("peer2", "resnet14")]
    logits = {"student": STUDENT, "peer1": PEER1, "peer2": PEER2}
    z_s, z_1, z_2 = leaves(STUDENT, PEER1, PEER2)
    terms = stack.losses(Outputs(z_s, others={"peer1": Outputs(z_1), "peer2": Outputs(z_2)}), batch_of(LABELS))
    for role, term in (("student", "dml_kl"), ("peer1", "peer1_dml_kl"), ("peer2", "peer2_dml_kl")):
        expected = scale * sum(mean_kl(z, logits[role], t) for other, z in logits.items() if other != role)
        assert terms[term].item() == pytest.approx(expected, rel=1e-6)


def test_dml_targets_carry_no_gradient():
    stack, _ = prepared({"name": "dml", "peers": ["resnet8", "resnet14"]})
    z = dict(zip(["student", "peer1", "peer2"], leaves(STUDENT, PEER1, PEER2)))
    terms = stack.losses(Outputs(z["student"], others={"peer1": Outputs(z["peer1"]), "peer2": Outputs(z["peer2"])}),
                         batch_of(LABELS))
    for owner, term in (("student", "dml_kl"), ("peer1", "peer1_dml_kl"), ("peer2", "peer2_dml_kl")):
        assert grad_size(terms[term], z[owner]) > 0
        for other in z.keys() - {owner}:
            assert grad_size(terms[term], z[other]) == 0.0, (term, other)


def test_dml_sequential_updates_one_network_per_round():
    stack, _ = prepared({"name": "dml", "peers": ["resnet8", "resnet14"], "sequential": True})
    assert stack.rounds == 3
    assert stack.paused(0) == {"peer1", "peer2"}
    assert stack.paused(1) == {"student", "peer2"}
    assert stack.paused(2) == {"student", "peer1"}
    z_s, z_1, z_2 = leaves(STUDENT, PEER1, PEER2)
    terms = stack.losses(Outputs(z_s, others={"peer1": Outputs(z_1), "peer2": Outputs(z_2)}), batch_of(LABELS))
    kept = stack.detach_paused(terms, 1)
    assert {k for k, v in kept.items() if v.requires_grad} == {"peer1_ce", "peer1_dml_kl"}
    assert kept["dml_kl"].item() == terms["dml_kl"].item()  # a paused network's terms are still logged


@pytest.mark.parametrize("options, words", [
    ({"peers": []}, ["method.peers", "at least 2 networks"]),
    ({"peers": ["resnet8", "resnet9000"]}, ["method.peers[1]", "'resnet9000'", "resnet20"]),
    ({"temperature": 0.0}, ["method.temperature"]),
    ({"reduction": "avg"}, ["method.reduction", "mean, sum"]),
])
def test_dml_bad_options_stop_with_one_line(options, words):
    with pytest.raises(UserError) as error:
        build_method({"name": "dml", **options})
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    assert all(w in str(error.value) for w in words), str(error.value)


# ----------------------------------------------------------------------------- SwitOKD
# Hand-made predictions for labels [0, 1] (logits = log p, so softmax gives p back).
EXPERT_T = [[0.8, 0.19, 0.01], [0.19, 0.8, 0.01]]  # d_t = 0.4
EXPERT_S = [[0.4, 0.01, 0.59], [0.01, 0.4, 0.59]]  # d_s = 1.2, G = 1.16 > delta = 1.2 - exp(-0.4/1.6) 0.4 = 0.889
CLOSE_T = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]  # d_t = 0.2
CLOSE_S = [[0.4, 0.3, 0.3], [0.3, 0.4, 0.3]]  # d_s = 1.2, G = 1.0 <= delta = 1.2 - exp(-0.2/1.4) 0.2 = 1.027


def logs(probs):
    return torch.tensor(probs).log().requires_grad_(True)


def switokd_outputs(student, teacher):
    return Outputs(student, others={"teacher": Outputs(teacher)})


def test_switokd_distances_match_hand_computation():
    y = torch.eye(3)[LABELS]
    d_s, d_t, gap = switch_distances(logs(EXPERT_S), logs(EXPERT_T), y, slice(None), Dist())
    assert (d_s.item(), d_t.item(), gap.item()) == pytest.approx((1.2, 0.4, 1.16), rel=1e-5)
    assert d_s.dtype == torch.float32 and not d_s.requires_grad


@pytest.mark.parametrize("student, teacher, expert", [
    (EXPERT_S, EXPERT_T, True),  # the teacher is ahead and the gap is wide: the teacher waits
    (CLOSE_S, CLOSE_T, False),  # the teacher is ahead but the gap is within the threshold
    (EXPERT_T, EXPERT_S, False),  # the gap is wide but the "teacher" is behind (d_t > d_s)
])
def test_switokd_mode_paused_teacher_and_statistic(student, teacher, expert):
    onehot = [[1, 0, 0], [0, 1, 0]]
    d_s = sum(l1(p, y) for p, y in zip(student, onehot)) / 2
    d_t = sum(l1(p, y) for p, y in zip(teacher, onehot)) / 2
    gap = sum(l1(p, q) for p, q in zip(student, teacher)) / 2
    assert (gap > d_s - math.exp(-d_t / (d_s + d_t)) * d_t and d_t < d_s) is expert  # the rule, by hand
    stack, specs = prepared({"name": "switokd", "teacher_model": "wrn_16_2"})
    assert specs == [NetworkSpec("teacher", "wrn_16_2")] and stack.stat_names == ("switokd_expert",)
    z_s, z_t = logs(student), logs(teacher)
    terms = stack.losses(switokd_outputs(z_s, z_t), batch_of(LABELS))
    assert set(terms) == {"ce", "switokd_kl", "teacher_ce", "teacher_switokd_kl"} == set(stack.term_names)
    assert stack.paused(0) == ({"teacher"} if expert else frozenset())
    assert stack.stats()["switokd_expert"].item() == (1.0 if expert else 0.0)
    kept = stack.detach_paused(terms, 0)
    assert kept["teacher_switokd_kl"].requires_grad is (not expert) and kept["teacher_ce"].requires_grad is (not expert)
    assert kept["switokd_kl"].requires_grad and kept["ce"].requires_grad


def test_switokd_terms_match_hand_computation_and_keep_gradients_apart():
    t = 2.0
    stack, _ = prepared({"name": "switokd", "teacher_model": "wrn_16_2", "temperature": t})
    z_s, z_t = leaves(STUDENT, PEER1)
    terms = stack.losses(switokd_outputs(z_s, z_t), batch_of(LABELS))
    assert terms["switokd_kl"].item() == pytest.approx(mean_kl(PEER1, STUDENT, t), rel=1e-6)
    assert terms["teacher_switokd_kl"].item() == pytest.approx(mean_kl(STUDENT, PEER1, t), rel=1e-6)
    assert grad_size(terms["teacher_switokd_kl"], z_s) == 0.0 and grad_size(terms["teacher_switokd_kl"], z_t) > 0
    assert grad_size(terms["switokd_kl"], z_t) == 0.0 and grad_size(terms["switokd_kl"], z_s) > 0


def test_switokd_label_is_the_mixed_target_under_mixup():
    # the student fits the hard labels, the teacher the 50/50 mixed targets: which one is "ahead" depends on the label
    student = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]
    teacher = [[0.48, 0.48, 0.04], [0.48, 0.48, 0.04]]
    stack, _ = prepared({"name": "switokd", "teacher_model": "wrn_16_2"})
    batch = batch_of(LABELS)
    stack.losses(switokd_outputs(logs(student), logs(teacher)), batch)
    assert stack.paused(0) == frozenset()  # unmixed: d_t = 1.04 > d_s = 0.2
    batch.mix = Mix(torch.zeros(2, 1, 4, 4), torch.tensor([1, 0]), torch.tensor([0.5, 0.5]))
    stack.losses(switokd_outputs(logs(student), logs(teacher)), batch)
    assert stack.paused(0) == {"teacher"}  # mixed: d_t = 0.08 < d_s = 0.9, G = 0.86 > delta = 0.826


def test_switokd_decides_on_every_rank_s_rows(monkeypatch):
    """Under DDP the sums and row counts are added over ranks: a rank of 2 rows (one without a label)
    and a rank of 1 row decide on exactly the 3-row global batch's distances."""
    z_s = torch.tensor([[0.4, 0.01, 0.59], [0.3, 0.4, 0.3], [0.01, 0.4, 0.59]]).log()
    z_t = torch.tensor([[0.8, 0.19, 0.01], [0.05, 0.9, 0.05], [0.19, 0.8, 0.01]]).log()
    y = torch.eye(3)[[0, 1, 1]]
    supervised = torch.tensor([0, 2])  # row 1 (on rank 0) has no label
    whole = switch_distances(z_s, z_t, y, supervised, Dist())
    other_rank: list[torch.Tensor] = []
    monkeypatch.setattr(switokd, "all_reduce_sum", lambda sums, dist: other_rank.append(sums.clone()) or sums)
    switch_distances(z_s[2:], z_t[2:], y[2:], slice(None), Dist(1, 2))
    monkeypatch.setattr(switokd, "all_reduce_sum", lambda sums, dist: sums.add_(other_rank[0]))
    rank0 = switch_distances(z_s[:2], z_t[:2], y[:2], torch.tensor([0]), Dist(0, 2))
    assert torch.allclose(torch.stack(rank0), torch.stack(whole))
    d_s = (l1([0.4, 0.01, 0.59], [1, 0, 0]) + l1([0.01, 0.4, 0.59], [0, 1, 0])) / 2
    gap = (1.16 + l1([0.3, 0.4, 0.3], [0.05, 0.9, 0.05]) + 1.16) / 3
    assert (whole[0].item(), whole[2].item()) == pytest.approx((d_s, gap), rel=1e-5)
    # the method hands the run's Dist to the collective
    seen: list[Dist] = []
    monkeypatch.setattr(switokd, "all_reduce_sum", lambda sums, dist: seen.append(dist) or sums)
    stack, _ = prepared({"name": "switokd", "teacher_model": "wrn_16_2"}, dist=Dist(0, 2))
    stack.losses(switokd_outputs(z_s, z_t), batch_of([0, 1, 1]))
    assert seen == [Dist(0, 2)]


def test_switokd_expert_mode_rule_at_the_boundary():
    d_s, d_t = torch.tensor(1.2), torch.tensor(0.4)
    delta = 1.2 - math.exp(-0.4 / 1.6) * 0.4
    assert expert_mode(d_s, d_t, torch.tensor(delta + 1e-4)) and not expert_mode(d_s, d_t, torch.tensor(delta - 1e-4))


@pytest.mark.parametrize("options, words", [
    ({}, ["method.teacher_model: set the architecture of the online teacher",
          "--set method.teacher_model=wrn_16_2"]),
    ({"teacher_model": "wrn_16_3"}, ["method.teacher_model", "'wrn_16_3'", "wrn_16_2"]),
    ({"teacher_model": "wrn_16_2", "temperature": -1.0}, ["method.temperature"]),
])
def test_switokd_bad_options_stop_with_one_line(options, words):
    with pytest.raises(UserError) as error:
        build_method({"name": "switokd", **options})
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    assert all(w in str(error.value) for w in words), str(error.value)
