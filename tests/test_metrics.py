import math

import pytest
import torch

from selfdistill.analysis.metrics import EvalAccumulator, ece_from_reliability, expected_calibration_error, top1


def test_ece_matches_hand_computation():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.55 (correct); 15 bins
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    # bin of 0.9: |acc 0.5 - conf 0.9| * 2/4 ; bin (0.533, 0.6]: both 0.55 and 0.6 -> acc 1, conf 0.575
    expected = 100 * (0.4 * 2 / 4 + abs(1 - 0.575) * 2 / 4)
    assert math.isclose(expected_calibration_error(probs, labels), expected, rel_tol=1e-6)


def test_accumulator_is_independent_of_batching():
    torch.manual_seed(0)
    logits, labels = torch.randn(100, 10) * 3, torch.randint(0, 10, (100,))
    whole = EvalAccumulator(10)
    whole.add(logits, labels)
    parts = EvalAccumulator(10)
    for chunk in range(0, 100, 7):
        parts.add(logits[chunk:chunk + 7], labels[chunk:chunk + 7])
    assert whole.count == parts.count == 100
    for metric in ("top1", "nll", "ece"):
        assert math.isclose(getattr(whole, metric)(), getattr(parts, metric)(), rel_tol=1e-6)
    assert math.isclose(whole.top1(), top1(logits, labels), rel_tol=1e-6)
    nll = torch.nn.functional.cross_entropy(logits, labels).item()
    assert math.isclose(whole.nll(), nll, rel_tol=1e-6)


def test_perfectly_calibrated_confident_predictions_have_zero_ece():
    probs = torch.eye(4)
    assert expected_calibration_error(probs, torch.arange(4)) == 0.0


# Four samples over six classes (so top-5 can miss), worked out by hand:
#   probs                                   label  argmax  conf  top-1  in top-5       bin (conf*15 ceil - 1)
#   [.50, .20, .10, .10, .05, .05]            0      0      .50   yes    yes           7
#   [.10, .62, .10, .08, .05, .05]            2      1      .62   no     yes (3rd)     9
#   [.35, .25, .20, .10, .09, .01]            5      0      .35   no     no (last)     5
#   [.02, .02, .02, .02, .02, .90]            5      5      .90   yes    yes           13
HAND_PROBS = torch.tensor([[.50, .20, .10, .10, .05, .05], [.10, .62, .10, .08, .05, .05],
                           [.35, .25, .20, .10, .09, .01], [.02, .02, .02, .02, .02, .90]])
HAND_LABELS = torch.tensor([0, 2, 5, 5])


def hand_accumulator(via_logits: bool) -> EvalAccumulator:
    acc = EvalAccumulator(6)
    if via_logits:  # log-probabilities are logits whose softmax gives back the probabilities
        acc.add(HAND_PROBS.log(), HAND_LABELS)
    else:
        acc.add_probs(HAND_PROBS, HAND_LABELS)
    return acc


@pytest.mark.parametrize("via_logits", [False, True])
def test_extended_metrics_match_hand_computation(via_logits):
    acc = hand_accumulator(via_logits)
    assert acc.count == 4
    assert math.isclose(acc.top1(), 50.0)  # samples 0 and 3
    assert math.isclose(acc.top5(), 75.0)  # all but sample 2, whose label has the lowest probability
    assert math.isclose(acc.nll(), -(math.log(.5) + math.log(.1) + math.log(.01) + math.log(.9)) / 4, rel_tol=1e-6)
    # one sample per occupied bin: |conf - correct| summed, / 4
    assert math.isclose(acc.ece(), 100 * (0.5 + 0.62 + 0.35 + 0.1) / 4, rel_tol=1e-6)
    # class 0: 1/1, class 2: 0/1, class 5: 1/2; classes 1, 3, 4 have no samples
    assert acc.per_class_accuracy() == [100.0, None, 0.0, None, None, 50.0]
    assert acc.class_counts() == [1, 0, 1, 0, 0, 2]
    rel = acc.reliability()
    assert rel["bins"] == 15
    assert rel["count"] == [0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0]
    assert rel["correct"] == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0]
    expected_conf = [0.0] * 15
    expected_conf[5], expected_conf[7], expected_conf[9], expected_conf[13] = .35, .5, .62, .9
    assert rel["confidence_sum"] == pytest.approx(expected_conf, abs=1e-6)
    assert math.isclose(ece_from_reliability(rel), acc.ece(), rel_tol=1e-12)


def test_top5_with_fewer_than_five_classes_is_top_k_over_all_classes():
    acc = EvalAccumulator(3)
    acc.add(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), torch.tensor([2, 0]))
    assert acc.k == 3 and acc.top5() == 100.0 and acc.top1() == 0.0


def random_batch(n=100, classes=10):
    torch.manual_seed(0)
    return torch.randn(n, classes) * 3, torch.randint(0, classes, (n,))


def test_extended_state_is_independent_of_batching():
    logits, labels = random_batch()
    whole, parts = EvalAccumulator(10), EvalAccumulator(10)
    whole.add(logits, labels)
    for chunk in range(0, 100, 7):
        parts.add(logits[chunk:chunk + 7], labels[chunk:chunk + 7])
    # counts are exact; float sums differ at most by float64 rounding of another summation order
    assert whole.class_counts() == parts.class_counts()
    assert whole.per_class_accuracy() == parts.per_class_accuracy()
    for key in ("count", "correct"):
        assert whole.reliability()[key] == parts.reliability()[key]
    assert whole.top5() == parts.top5() and whole.top1() == parts.top1()
    assert torch.allclose(whole.state, parts.state, rtol=1e-12, atol=1e-12)


def test_summing_states_of_two_shards_equals_one_pass():
    # what all_reduce_sum does across two processes, each with half the test set
    logits, labels = random_batch()
    whole, first, second = EvalAccumulator(10), EvalAccumulator(10), EvalAccumulator(10)
    whole.add(logits, labels)
    first.add(logits[:50], labels[:50])
    second.add(logits[50:], labels[50:])
    first.state += second.state
    assert torch.allclose(whole.state, first.state, rtol=1e-12, atol=1e-12)
    assert first.per_class_accuracy() == whole.per_class_accuracy() and first.top5() == whole.top5()


def test_ece_equals_the_value_computed_from_the_reliability_bins():
    logits, labels = random_batch(500)
    acc = EvalAccumulator(10)
    acc.add(logits, labels)
    rel = acc.reliability()
    assert sum(rel["count"]) == acc.count == 500
    assert math.isclose(ece_from_reliability(rel), acc.ece(), rel_tol=1e-12)
    per_class_correct = sum(a * n / 100 for a, n in zip(acc.per_class_accuracy(), acc.class_counts()) if n)
    assert math.isclose(per_class_correct, sum(rel["correct"]))
