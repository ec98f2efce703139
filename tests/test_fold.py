"""Batch norms folded into their convolutions (frozen teachers): the same function, the same module paths,
and nothing folded that a tap, a second call or a training-mode batch norm would tell apart."""

import pytest
import torch
import torch.nn as nn

from conftest import small_config
from selfdistill.engine import Trainer
from selfdistill.models import build_model
from selfdistill.models.fold import fold_batch_norms, foldable_pairs
from selfdistill.models.taps import FeatureTaps


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics and affine parameters far from 0/1, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval().requires_grad_(False)


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("arch", ["cnn", "resnet20", "resnet8x4", "wrn16_2", "vgg8", "resnet18", "ResNet50",
                                  "MobileNetV2", "ShuffleV1", "ShuffleV2", "densenet40_k12", "mlp"])
def test_folded_network_computes_the_same_function(arch):
    torch.manual_seed(0)
    model = randomised(build_model(arch, 10, 3, 32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    count = batch_norms(model)
    folded = fold_batch_norms(model)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert batch_norms(model) == count - len(folded)
    assert all(isinstance(model.get_submodule(path), nn.Identity) for path in folded)
    if arch in ("cnn", "resnet20", "vgg8", "resnet18"):  # convolution then batch norm throughout
        assert folded and batch_norms(model) == 0
    if arch == "densenet40_k12":  # pre-activation: every batch norm follows a concatenation or comes first
        assert batch_norms(model) > 0


class Twice(nn.Module):
    """One convolution called twice, each time into its own batch norm: folding would change both calls."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


class Branching(nn.Module):
    """The convolution's output goes to the batch norm and to a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_what_a_fold_would_change_is_left_alone():
    for module in (Twice(), Branching()):
        assert foldable_pairs(randomised(module)) == []
    training = randomised(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3))).train()
    assert foldable_pairs(training) == []  # a batch norm in training mode normalises by the batch
    no_stats = randomised(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)))
    assert foldable_pairs(no_stats) == []


def test_taps_see_the_values_they_saw_before_folding():
    torch.manual_seed(0)  # unseeded, about one draw in five of the random BN statistics rounds past the tolerance
    model = randomised(build_model("resnet20", 10, 3, 32))
    x = torch.randn(2, 3, 32, 32)
    paths = ["layer1.0.conv1", "layer1.0.bn1", "layer2", "layer3.2.conv2", "layer3.0.bn1:input", "layer3.1:input"]
    reference = FeatureTaps(model, paths)
    with torch.no_grad(), reference.record():
        model(x)
    expected = {p: f.clone() for p, f in reference.features.items()}
    reference.remove()
    folded = fold_batch_norms(model, paths)
    assert "layer1.0.bn1" not in folded and "layer3.2.bn2" not in folded  # their convolutions are tapped
    assert "layer3.0.bn1" not in folded  # its input, the raw convolution output, is tapped
    assert "layer3.1.bn1" in folded  # a block's input is what came before its first convolution
    assert "layer2.0.bn1" in folded  # inside a tapped stage that holds both
    taps = FeatureTaps(model, paths)
    with torch.no_grad(), taps.record():
        model(x)
    for path in paths:
        assert torch.allclose(taps.features[path], expected[path], rtol=1e-4, atol=1e-4), path


def test_a_frozen_teacher_is_folded_after_the_methods_setup_and_its_outputs_kept(tmp_path):
    teacher_run = tmp_path / "teacher"
    Trainer(small_config(model={"name": "cnn"}, train={"epochs": 1, "device": "cpu"}), teacher_run).fit()
    student = Trainer(small_config(method={"name": "kd"}, teachers=[str(teacher_run)],
                                   train={"epochs": 1, "device": "cpu"}))
    teacher = student.teachers[0]
    assert teacher.folded and batch_norms(teacher.module) == 0
    saved = build_model("cnn", 10, 1, 12)
    saved.load_state_dict(torch.load(teacher_run / "model.pt", weights_only=True))
    x = student.augment.eval(student.data.test_images)
    with torch.no_grad():
        assert torch.allclose(teacher(x).logits, saved.eval()(x), rtol=1e-4, atol=1e-5)
