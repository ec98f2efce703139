"""DLB's invariants, on tiny tensors and inside the engine."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import Recorder, small_config
from selfdistill import DLBHelper
from selfdistill.engine import Trainer
from selfdistill.losses import kd_kl
from selfdistill.methods import DLB, Batch, MethodStack, Outputs
from selfdistill.methods.dlb import REPLAY, DLBOptions


def step(method, images, labels, logits_fn, indices=None):
    batch = method.extend(Batch.new(images, labels, indices))
    out = Outputs(logits_fn(batch))
    terms = method.losses(out, batch)
    method.update(out, batch)
    return batch, out, terms


def test_first_step_is_cross_entropy_only():
    stack = MethodStack([DLB()])
    logits = torch.randn(4, 3, requires_grad=True)
    batch, _, terms = step(stack, torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), lambda b: logits)
    assert set(batch.parts) == {"new"} and len(batch) == 4
    assert terms["dlb_kl"].item() == 0.0
    assert torch.allclose(terms["ce"], F.cross_entropy(logits, batch.labels))


def test_replayed_rows_are_the_previous_steps_images_labels_and_indices():
    dlb = DLB()
    images1, images2 = torch.rand(3, 1, 2, 2), torch.rand(2, 1, 2, 2)
    step(dlb, images1, torch.tensor([0, 1, 2]), lambda b: torch.randn(len(b), 3), torch.tensor([10, 11, 12]))
    batch, _, _ = step(dlb, images2, torch.tensor([2, 2]), lambda b: torch.randn(len(b), 3), torch.tensor([5, 6]))
    replay = batch.parts[REPLAY]
    assert batch.parts["new"] == slice(0, 2) and replay == slice(2, 5)
    assert torch.equal(batch.images[replay], images1)
    assert batch.labels[replay].tolist() == [0, 1, 2] and batch.indices[replay].tolist() == [10, 11, 12]


def test_kl_target_is_last_steps_logits_detached_and_averaged_over_replayed_rows():
    dlb = DLB(DLBOptions(temperature=2.0, alpha=0.5))
    first = torch.randn(3, 4, requires_grad=True)
    step(dlb, torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), lambda b: first)
    assert not dlb.previous["logits"].requires_grad
    second = torch.randn(5, 4, requires_grad=True)  # 2 new rows + 3 replayed
    _, _, terms = step(dlb, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), lambda b: second)
    expected = 0.5 * kd_kl(second[2:], first.detach(), 2.0)  # batchmean over the 3 replayed rows
    assert torch.allclose(terms["dlb_kl"], expected)
    terms["dlb_kl"].backward()
    assert first.grad is None  # no gradient reaches the stored target
    assert second.grad[:2].abs().sum() == 0 and second.grad[2:].abs().sum() > 0  # only replayed rows


def test_total_loss_matches_hand_computation():
    stack = MethodStack([DLB(DLBOptions(temperature=3.0, alpha=1.0))])
    z1 = torch.tensor([[2.0, 0.0]])
    step(stack, torch.zeros(1, 1), torch.tensor([0]), lambda b: z1)
    z2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # row 0 new (label 1), row 1 replay (label 0)
    _, _, terms = step(stack, torch.zeros(1, 1), torch.tensor([1]), lambda b: z2)

    def softmax(row, t=1.0):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    ce = (-math.log(softmax([0.0, 1.0])[1]) - math.log(softmax([1.0, 1.0])[0])) / 2
    p, q = softmax([2.0, 0.0], 3.0), softmax([1.0, 1.0], 3.0)
    kl = 9 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["dlb_kl"].item() == pytest.approx(kl, rel=1e-5)


def test_kl_vanishes_when_the_replayed_logits_equal_the_stored_ones():
    dlb = DLB()
    z = torch.randn(2, 5)
    step(dlb, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), lambda b: z)
    _, _, terms = step(dlb, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), lambda b: torch.cat([z, z]))
    assert terms["dlb_kl"].abs().item() < 1e-6


def test_two_forward_option_splits_new_and_replayed_rows():
    dlb = DLB(DLBOptions(forwards=2))
    step(dlb, torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), lambda b: torch.randn(3, 2))
    batch = dlb.extend(Batch.new(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)))
    assert batch.forward_splits() == [(4, True), (3, True)]
    assert DLB().extend(batch).forward_splits() is not None  # parts keep their own-forward flag
    assert Batch.new(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)).forward_splits() is None


def test_cache_is_carried_across_epochs_unless_reset():
    for carry in (True, False):
        dlb = DLB(DLBOptions(carry_across_epochs=carry))
        dlb.start_epoch(0)
        step(dlb, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), lambda b: torch.randn(len(b), 2))
        dlb.start_epoch(1)
        batch = dlb.extend(Batch.new(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)))
        assert (REPLAY in batch.parts) is carry


def test_alpha_warmup_ramps_linearly_per_epoch():
    dlb = DLB(DLBOptions(alpha=2.0, alpha_warmup_epochs=4))
    alphas = []
    for epoch in range(6):
        dlb.start_epoch(epoch)
        alphas.append(dlb.alpha)
    assert alphas == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_state_dict_round_trip_restores_the_cache():
    dlb = DLB()
    step(dlb, torch.rand(2, 1), torch.tensor([1, 0]), lambda b: torch.randn(2, 3), torch.tensor([7, 8]))
    other = DLB()
    other.load_state_dict(dlb.state_dict())
    for key in ("images", "labels", "indices", "logits"):
        assert torch.equal(other.previous[key], dlb.previous[key])


def test_engine_replays_each_previous_batch_reaugmented_across_epoch_boundaries():
    trainer = Trainer(small_config(method={"name": "dlb"}))
    recorder = Recorder()
    trainer.method = MethodStack([DLB(), recorder])
    trainer.train_epoch(0)
    trainer.train_epoch(1)
    seen = recorder.seen
    assert REPLAY not in seen[0][0].parts  # very first step: nothing to replay
    reaugmented = 0
    for (prev, _), (cur, _) in zip(seen, seen[1:]):
        new, replay = prev.parts["new"], cur.parts[REPLAY]
        assert torch.equal(cur.indices[replay], prev.indices[new])  # across the epoch boundary too
        assert torch.equal(cur.images[replay], prev.images[new])
        reaugmented += int(not torch.equal(cur.inputs[replay], prev.inputs[new]))
    assert reaugmented == len(seen) - 1  # every replayed batch got fresh augmentation


def test_plugin_helper_matches_the_method_and_reaugments():
    torch.manual_seed(0)
    calls = []

    def augment(images):
        calls.append(len(images))
        return images + 0.01 * torch.randn_like(images)

    helper = DLBHelper(augment=augment, temperature=3.0, alpha=1.0)
    first_inputs, targets = helper.prepare(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
    z1 = torch.randn(4, 2)
    assert helper.loss(z1).item() == 0.0 and targets.tolist() == [0, 1, 0, 1]
    inputs, targets = helper.prepare(torch.rand(3, 2), torch.tensor([1, 1, 0]))
    assert calls == [4, 7] and targets.tolist() == [1, 1, 0, 0, 1, 0, 1]
    z2 = torch.randn(7, 2, requires_grad=True)
    assert torch.allclose(helper.loss(z2), kd_kl(z2[3:], z1, 3.0))
    with pytest.raises(RuntimeError):
        helper.loss(z2)
