"""The teacher-free methods against hand-computed values and the properties their papers rely on."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL_SYNTHETIC, Recorder, small_config
from selfdistill.engine import Trainer, resolve, train
from selfdistill.errors import UserError
from selfdistill.losses import kd_kl
from selfdistill.methods import Batch, MethodStack, Outputs, build_method
from selfdistill.methods.base import SetupContext
from selfdistill.methods.byot import feature_hint
from selfdistill.methods.cs_kd import CSKD, PARTNER, same_class_partners
from selfdistill.methods.dsr import DSR, sorted_kl
from selfdistill.methods.label_smoothing import LabelSmoothing, LSOptions
from selfdistill.methods.ps_kd import PSKD
from selfdistill.methods.tf_kd_reg import TfKDReg, TfKDRegOptions
from selfdistill.models import FeatureTaps, build_model, count_parameters


def batch_of(labels, indices=None, k=3):
    labels = torch.tensor(labels)
    return Batch.new(torch.zeros(len(labels), 1, 4, 4), labels, None if indices is None else torch.tensor(indices))


def ctx_for(model_name="cnn", labels=None, epochs=4, size=28, classes=10):
    model = build_model(model_name, classes, 1, size)
    labels = torch.arange(20) % classes if labels is None else labels
    return SetupContext(model, model_name, classes, (1, size, size), labels, epochs, torch.device("cpu"))


# ----------------------------------------------------------------------------- label smoothing
def test_label_smoothing_matches_hand_computation_in_both_conventions():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = F.log_softmax(logits, 1)[0].tolist()
    for convention, off in (("uniform", 0.1 / 3), ("others", 0.1 / 2)):
        on = 1 - 0.1 + 0.1 / 3 if convention == "uniform" else 0.9
        expected = -(on * log_p[0] + off * log_p[1] + off * log_p[2])
        method = LabelSmoothing(LSOptions(0.1, convention))
        value = method.losses(Outputs(logits), batch_of([0]))["ls_ce"].item()
        assert value == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- DSR
def test_sorted_logit_kl_is_invariant_to_permuting_classes():
    now, prev = torch.randn(4, 6), torch.randn(4, 6)
    perm_a, perm_b = torch.randperm(6), torch.randperm(6)
    base = sorted_kl(now, prev, 4.0)
    assert torch.allclose(sorted_kl(now[:, perm_a], prev[:, perm_b], 4.0), base)
    assert sorted_kl(now, now[:, perm_a], 4.0).abs() < 1e-6  # same shape, different classes: no penalty
    assert base > 0


def test_dsr_pairs_with_the_last_batch_detached_and_restarts_each_epoch():
    dsr = DSR()
    dsr.start_epoch(0)
    first = torch.randn(3, 5)
    assert dsr.losses(Outputs(first), batch_of([0, 1, 2]))["dsr_kl"].item() == 0.0  # first batch: skipped
    dsr.update(Outputs(first), batch_of([0, 1, 2]))
    second = torch.randn(2, 5, requires_grad=True)  # a smaller batch pairs with the first 2 rows
    term = dsr.losses(Outputs(second), batch_of([0, 1]))["dsr_kl"]
    assert torch.allclose(term, kd_kl(second.sort(1).values, first[:2].sort(1).values, 4.0))
    term.backward()
    assert second.grad.abs().sum() > 0 and not dsr.previous.requires_grad
    dsr.start_epoch(1)
    assert dsr.losses(Outputs(second.detach()), batch_of([0, 1]))["dsr_kl"].item() == 0.0


# ----------------------------------------------------------------------------- DRG and BYOT
def test_drg_head_fits_the_real_stage_width_and_is_absent_from_the_saved_model(tmp_path):
    for model_name, channels in (("cnn", 64), ("resnet8", 32)):
        method = build_method({"name": "drg"})
        method.setup(ctx_for(model_name))
        head = method.modules()["drg"]["head"]
        assert head.fc.in_features == 4 * channels
    metrics = train(small_config(method={"name": "drg"}, model={"name": "resnet8"}), tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    fresh = build_model("resnet8", 10, 1, 12)
    assert set(saved) == set(fresh.state_dict()) and count_parameters(fresh) == metrics["parameters"]
    same = build_method({"name": "drg"})
    same.setup(ctx_for("resnet8", size=12))
    assert metrics["extra_parameters"] == count_parameters(same.members[1].head) > 0


def test_drg_teaches_the_output_with_a_detached_head():
    method = build_method({"name": "drg"})
    ctx = ctx_for("cnn")
    method.setup(ctx)
    taps = FeatureTaps(ctx.model, ["layer2"])
    logits = ctx.model(torch.randn(4, 1, 28, 28))
    out = Outputs(logits, dict(taps.features))
    terms = method.losses(out, batch_of([0, 1, 2, 3]))
    head = method.members[1].head
    terms["drg_kl"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.parameters())  # the head is the teacher
    terms["drg_head_ce"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize("method", ["drg", "byot", "lightskd"])
def test_head_methods_refuse_a_missing_stage_or_a_flat_model(method):
    with pytest.raises(UserError) as err:
        Trainer(small_config(method={"name": method} if method != "drg" else {"name": "drg", "stage": "layer9"},
                             model={"name": "mlp" if method != "drg" else "cnn"}))
    message = str(err.value)
    assert "\n" not in message and ("layer1, layer2, layer3" in message or "convolutional" in message)


def test_byot_heads_bring_every_stage_to_the_deepest_resolution():
    method = build_method({"name": "byot"})
    method.setup(ctx_for("resnet8", size=28))
    byot = method.members[0]
    assert byot.stages == ["layer1", "layer2"]
    strides = [head.body[3].stride[0] for head in byot.heads.values()]
    assert strides == [4, 2]  # 28x28 and 14x14 down to 7x7
    assert all(head.fc.in_features == 64 for head in byot.heads.values())


def test_byot_hint_sums_squares_where_either_feature_is_positive():
    student = torch.tensor([[1.0, -1.0, -2.0]])
    teacher = torch.tensor([[0.5, -3.0, 2.0]])
    assert feature_hint(student, teacher).item() == pytest.approx(0.25 + 0 + 16.0)


# ----------------------------------------------------------------------------- PS-KD
def test_ps_kd_memory_is_indexed_by_sample_not_batch_position():
    pskd = PSKD()
    pskd.setup(ctx_for(labels=torch.tensor([0, 1, 2, 0, 1, 2]), classes=3, epochs=4))
    pskd.start_epoch(0)
    batch = batch_of([2, 0], indices=[5, 3])
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    onehot = F.one_hot(torch.tensor([2, 0]), 3).float()
    assert torch.allclose(pskd.losses(Outputs(logits), batch)["pskd_ce"], F.cross_entropy(logits, onehot))
    pskd.update(Outputs(logits), batch)
    assert torch.allclose(pskd.memory[5], logits[0].softmax(0)) and torch.allclose(pskd.memory[3], logits[1].softmax(0))
    assert torch.equal(pskd.memory[0], torch.tensor([1.0, 0, 0]))  # unvisited rows keep their one-hot label
    pskd.start_epoch(1)  # alpha = 0.8 * 2 / 4
    later = batch_of([0, 2], indices=[3, 5])  # same samples, other positions
    z = torch.zeros(2, 3)
    target = 0.6 * F.one_hot(torch.tensor([0, 2]), 3).float() + 0.4 * torch.stack([logits[1], logits[0]]).softmax(1)
    assert torch.allclose(pskd.losses(Outputs(z), later)["pskd_ce"], F.cross_entropy(z, target))


# ----------------------------------------------------------------------------- CS-KD
def test_cs_kd_sampler_pairs_share_a_class_and_anchors_cover_the_data():
    labels = torch.arange(103) % 7
    batches = CSKD().batches(labels, 10, torch.Generator().manual_seed(0), False, 0, 1)
    anchors = torch.cat([b[: len(b) // 2] for b in batches])
    partners = torch.cat([b[len(b) // 2:] for b in batches])
    assert sorted(anchors.tolist()) == list(range(103))
    assert torch.equal(labels[anchors], labels[partners])
    assert (anchors != partners).float().mean() > 0.8  # mostly other images of the class
    draws = same_class_partners(torch.zeros(2000, dtype=torch.long), labels, torch.Generator().manual_seed(1))
    assert len(set(draws.tolist())) == 15  # uniform over all 15 members of class 0, itself included


def test_cs_kd_partner_half_is_a_detached_teacher_without_hard_label_loss():
    method = build_method({"name": "cs_kd"})
    batch = method.extend(batch_of([0, 1, 0, 1]))
    assert batch.parts["new"] == slice(0, 2) and batch.parts[PARTNER] == slice(2, 4)
    assert batch.forward_splits() == [(2, True), (2, False)]
    logits = torch.randn(4, 3, requires_grad=True)
    terms = method.losses(Outputs(logits), batch)
    assert torch.allclose(terms["ce"], F.cross_entropy(logits[:2], torch.tensor([0, 1])))
    assert torch.allclose(terms["cskd_kl"], kd_kl(logits[:2], logits[2:], 4.0))
    terms["cskd_kl"].backward()
    assert logits.grad[2:].abs().sum() == 0


# ----------------------------------------------------------------------------- Tf-KD
def test_tf_kd_reg_virtual_teacher_in_both_variants():
    logits = torch.zeros(1, 10, requires_grad=True)
    log_pd = torch.full((10,), math.log(0.01 / 9))
    log_pd[3] = math.log(0.99)
    # official code: softmax of the probabilities / T, student at T = 1 (nearly uniform target)
    code = TfKDReg(TfKDRegOptions(a=0.99, temperature=20.0, alpha=1.0)).losses(Outputs(logits), batch_of([3]))
    target = (log_pd.exp() / 20).softmax(0)
    assert target[3].item() == pytest.approx(0.1045, abs=1e-4)
    expected = F.kl_div(torch.full((10,), math.log(0.1)), target, reduction="sum").item()
    assert code["tfkd_reg_kl"].item() == pytest.approx(expected, rel=1e-5) and code["tfkd_ce"].item() == 0.0
    # paper Eq. 9: the teacher's log-probabilities tempered by T (near the paper's Fig. 3: ~0.15 / 0.095)
    paper = TfKDReg(TfKDRegOptions(a=0.99, temperature=20.0, alpha=1.0, variant="paper"))
    tempered = (log_pd / 20).softmax(0)
    assert tempered[3].item() == pytest.approx(0.135, abs=0.001)
    assert tempered[0].item() == pytest.approx(0.096, abs=0.001)
    expected = F.kl_div(torch.full((10,), math.log(0.1)), tempered, reduction="sum").item()
    assert paper.losses(Outputs(logits), batch_of([3]))["tfkd_reg_kl"].item() == pytest.approx(expected, rel=1e-5)


def test_tf_kd_self_needs_a_teacher_and_learns_from_one(tmp_path):
    with pytest.raises(UserError, match="needs a teacher"):
        Trainer(small_config(method={"name": "tf_kd_self"}))
    train(small_config(), tmp_path / "teacher")
    student = Trainer(small_config(method={"name": "tf_kd_self"}, teachers=[str(tmp_path / "teacher")],
                                   train={"epochs": 3, "progress": False}))
    teacher = student.teachers[0].module
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    student.fit()
    kl = [row["tfkd_self_kl"] for row in student.history]
    assert kl[-1] < kl[0]  # the student moves towards its teacher
    assert student.history[-1]["test_top1"] > 15  # and learns (chance is 10%)


# ----------------------------------------------------------------------------- composition
@pytest.mark.parametrize("name, extra", [("dlb+drg", {"dlb": {"forwards": 2}}), ("cs_kd+drg", {}),
                                         ("dlb+bake", {"dlb": {"forwards": 2}})])
def test_taps_stay_row_aligned_with_logits_when_the_forward_is_split(name, extra):
    trainer = Trainer(small_config(method={"name": name, **extra}, model={"name": "cnn"}))
    recorder = Recorder()
    trainer.method = MethodStack([*trainer.method.members, recorder])
    seen = []
    original = recorder.losses

    def losses(out, batch):
        seen.append({path: len(f) for path, f in out.features.items()} | {"logits": len(out.logits)})
        return original(out, batch)

    recorder.losses = losses
    trainer.train_epoch(0)
    assert len(seen) > 2 and all(len(set(sizes.values())) == 1 for sizes in seen)


@pytest.mark.parametrize("name, problem", [("bake+cs_kd", "sampler"), ("ls+ps_kd", "replace"),
                                           ("dlb+dlb", "at most once")])
def test_impossible_combinations_fail_before_training(name, problem):
    with pytest.raises(UserError, match=problem):
        resolve([{"method": {"name": name}}])


def test_combined_methods_add_their_terms():
    metrics = train(small_config(method={"name": "dlb+dsr"}))
    assert metrics["method"] == "dlb+dsr" and metrics["test_top1"] > 20
    config = small_config(method={"name": "lightskd"}, model={"name": "cnn"})
    assert config.method == {"name": "lightskd", "drg": {"stage": "layer2", "temperature": 4.0, "alpha": 0.2},
                             "dsr": {"temperature": 4.0, "beta": 1.0, "carry_across_epochs": False}}
    assert Trainer(config).method.term_names == ("ce", "drg_head_ce", "drg_kl", "dsr_kl")


# ----------------------------------------------------------------------------- tf-NKD
def test_tf_nkd_matches_hand_computation():
    from selfdistill.methods.tf_nkd import TfNKD

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    p = logits.detach().softmax(1)
    p_t = torch.stack([p[0, 0], p[1, 0]])  # both labelled class 0
    w = p_t + 1 - p_t.mean()
    expected = -(w * p_t.log()).mean()
    term = TfNKD().losses(Outputs(logits), batch_of([0, 0]))["tf_nkd"]
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)
    term.backward()
    manual = logits.detach().clone().requires_grad_(True)
    (-(w * F.log_softmax(manual, 1)[:, 0]).mean()).backward()  # the weight carries no gradient
    assert torch.allclose(logits.grad, manual.grad, atol=1e-6)


# ----------------------------------------------------------------------------- Zipf's LS
def test_zipf_rank_ties_take_the_smallest_rank_and_target_is_excluded():
    from selfdistill.methods.zipf_ls import min_rank, zipf_targets

    votes = torch.tensor([[5, 0, 3, 3, 0]])
    assert min_rank(votes).tolist() == [[1, 4, 2, 2, 4]]
    exclude = torch.tensor([[False, False, True, False, False]])  # target = class 2
    q = zipf_targets(votes, exclude, 1.0)
    expected = torch.tensor([1, 1 / 4, 0, 1 / 2, 1 / 4])
    assert torch.allclose(q, (expected / expected.sum())[None])


def test_zipf_votes_come_from_the_classifier_at_every_location():
    method = build_method({"name": "zipf_ls"})
    ctx = ctx_for("cnn")
    method.setup(ctx)
    zipf = method.members[1]
    assert zipf.tap == "pool.0:input"
    fmap = torch.randn(2, 128, 7, 7)
    votes = zipf.dense_votes(fmap, 10)
    assert votes.sum(1).tolist() == [14 * 14, 14 * 14]  # every location of the x2-upsampled map votes once
    up = F.interpolate(fmap, scale_factor=2, mode="bilinear", align_corners=False)
    winners = ctx.model.fc(up.permute(0, 2, 3, 1)).argmax(-1)
    assert votes[0, winners[0, 0, 0]] > 0


def test_zipf_loss_is_kl_over_non_target_classes():
    from selfdistill.methods.zipf_ls import ZipfLS

    zipf = ZipfLS()
    zipf.setup(ctx_for("cnn"))
    logits = torch.randn(3, 10, requires_grad=True)
    batch = batch_of([1, 2, 3])
    out = Outputs(logits, {zipf.tap: torch.randn(3, 128, 7, 7)})
    term = zipf.losses(out, batch)["zipf_kl"]
    votes = zipf.dense_votes(out.features[zipf.tap], 10)
    exclude = F.one_hot(batch.labels, 10).bool()
    from selfdistill.methods.zipf_ls import zipf_targets
    q = zipf_targets(votes, exclude, 1.0)
    expected = 0
    for i in range(3):
        keep = ~exclude[i]
        log_p = F.log_softmax(logits[i, keep], 0)
        expected += (q[i, keep] * (q[i, keep].log() - log_p)).sum() / 3
    assert term.item() == pytest.approx(0.1 * expected.item(), rel=1e-5)
    term.backward()
    assert logits.grad[torch.arange(3), batch.labels].abs().sum() == 0  # target logits take no part


# ----------------------------------------------------------------------------- BAKE
def test_bake_propagation_rows_sum_to_one_and_teacher_is_detached():
    from selfdistill.methods.bake import BAKE

    bake = BAKE()
    features = torch.randn(6, 8)
    logits = torch.randn(6, 5, requires_grad=True)
    f = F.normalize(features, dim=1)
    affinity = torch.softmax(f @ f.T - 1e9 * torch.eye(6), 1)
    assert torch.allclose(affinity.sum(1), torch.ones(6)) and affinity.diag().abs().max() < 1e-6
    propagation = 0.5 * torch.linalg.inv(torch.eye(6) - 0.5 * affinity)
    assert torch.allclose(propagation.sum(1), torch.ones(6), atol=1e-5)  # (1 - w)(I - wA)^-1 is row-stochastic
    term = bake.losses(Outputs(logits, {"fc:input": features}), batch_of([0] * 6))["bake_kl"]
    target = propagation @ (logits.detach() / 4).softmax(1)
    expected = 16 * F.kl_div(F.log_softmax(logits.detach() / 4, 1), target, reduction="batchmean")
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bake_sampler_groups_same_class_images_and_covers_every_anchor():
    from selfdistill.methods.bake import BAKE

    labels = torch.arange(200) % 10
    batches = BAKE().batches(labels, 32, torch.Generator().manual_seed(0), False, 0, 1)
    anchors = []
    for batch in batches:
        a = len(batch) // 4
        head, extras = batch[:a], batch[a:].view(a, 3)
        anchors += head.tolist()
        assert (labels[extras] == labels[head][:, None]).all()  # each anchor brings 3 of its class
        assert (extras != head[:, None]).all()  # never itself
        assert all(len(set(row)) == 3 for row in extras.tolist())  # distinct
    assert sorted(anchors) == list(range(200)) and len(batches) == 25  # 8 anchors per batch of 32


# ----------------------------------------------------------------------------- mixing
def test_mixup_and_cutmix_targets_and_images():
    from selfdistill.data.mixing import Mixer, apply_mix

    images = torch.randint(0, 255, (8, 1, 10, 10), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    torch.manual_seed(0)
    cut = Mixer("cutmix", 1.0, 1.0, 10).draw(images, labels, torch.Generator().manual_seed(1))
    top, left, bottom, right = cut.boxes[0].tolist()
    assert cut.lam[0].item() == pytest.approx(1 - (bottom - top) * (right - left) / 100)
    a, b = torch.zeros(8, 1, 10, 10), torch.ones(8, 1, 10, 10)
    mixed = apply_mix(a, b, cut)
    assert mixed[0].mean().item() == pytest.approx(1 - cut.lam[0].item())  # the partner fills the box
    batch = Batch.new(images, labels)
    batch.mix = cut
    targets = batch.targets(3)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    same = labels == cut.partner_labels
    assert torch.allclose(targets[same].max(1).values, torch.ones(int(same.sum())))
    up = Mixer("mixup", 0.4, 1.0, 10).draw(images, labels, torch.Generator().manual_seed(2))
    assert torch.allclose(apply_mix(a, b, up)[:, 0, 0, 0], 1 - up.lam)


def test_dlb_replays_the_same_mixed_image_reaugmented():
    from selfdistill.methods import DLB, MethodStack
    from selfdistill.methods.dlb import REPLAY

    trainer = Trainer(small_config(method={"name": "dlb"}, data={**SMALL_SYNTHETIC, "mix": {"name": "cutmix",
                                                                                             "prob": 1.0}}))
    recorder = Recorder()
    trainer.method = MethodStack([DLB(), recorder])
    trainer.train_epoch(0)
    pairs = list(zip(recorder.seen, recorder.seen[1:]))
    assert pairs
    for (prev, _), (cur, _) in pairs:
        new, replay = prev.parts["new"], cur.parts[REPLAY]
        assert torch.equal(cur.mix.partner_images[replay], prev.mix.partner_images[new])
        assert torch.equal(cur.mix.lam[replay], prev.mix.lam[new]) and torch.equal(cur.mix.boxes[replay],
                                                                                   prev.mix.boxes[new])
        assert torch.equal(cur.targets(10)[replay], prev.targets(10)[new])  # same mixed hard-label target
        assert not torch.equal(cur.inputs[replay], prev.inputs[new])  # but augmented afresh


def test_mixing_is_refused_by_methods_that_need_clean_rows():
    with pytest.raises(UserError, match="cannot be combined with mixup"):
        Trainer(small_config(method={"name": "ps_kd"}, data={**SMALL_SYNTHETIC, "mix": {"name": "mixup"}}))


@pytest.mark.parametrize("method", ["ce", "ls", "dlb", "tf_nkd", "zipf_ls", "bake", "tf_kd_reg", "byot", "lightskd"])
def test_methods_that_support_mixing_train_with_cutmix(method):
    config = small_config(method={"name": method}, model={"name": "cnn"},
                          data={**SMALL_SYNTHETIC, "mix": {"name": "cutmix", "prob": 1.0}},
                          train={"epochs": 1, "progress": False})
    metrics = train(config)
    assert math.isfinite(metrics["test_nll"])
