import math

import torch

from selfdistill.metrics import EvalAccumulator, expected_calibration_error, top1


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
