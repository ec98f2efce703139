"""The residual blocks rectify and sum in place (issue 10): the same logits, gradients and BN statistics as
the out-of-place forwards they replaced, and every feature tap still sees what its module returned."""

import copy
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfdistill.errors import UserError
from selfdistill.models import FeatureTaps, build_model
from selfdistill.models.mobilenetv2 import InvertedResidual, MobileNetV2
from selfdistill.models.resnet_bottleneck import Bottleneck
from selfdistill.models.resnet_cifar import BasicBlock, ResNet
from selfdistill.models.shufflenet import ShuffleNetV1, ShuffleUnitV1, channel_shuffle
from selfdistill.models.wrn import PreActBlock


# The forwards before issue 10, word for word: nothing in them changes a tensor in place.
def basic_block(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def bottleneck(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def preact_block(self, x):
    out = F.relu(self.bn1(x))
    shortcut = x if self.shortcut is None else self.shortcut(out)
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return out + shortcut


def inverted_residual(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


def shuffle_unit_v1(self, x):
    out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.stride == 2:
        return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
    return F.relu(out + x)


OLD = {BasicBlock: basic_block, Bottleneck: bottleneck, PreActBlock: preact_block,
       InvertedResidual: inverted_residual, ShuffleUnitV1: shuffle_unit_v1}


def out_of_place(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same weights) that changes no tensor in place: the old block forwards, and
    every module with an ``inplace`` flag (nn.ReLU(inplace=True) in the stems and heads) with it off."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if type(module) in OLD:
            module.forward = types.MethodType(OLD[type(module)], module)
        if getattr(module, "inplace", False):
            module.inplace = False
    return reference


SMALL = {  # the other changed blocks in small networks, to keep the tests fast
    "bottleneck": lambda: ResNet([1, 2], [4, 8], 8, 10, 3, block=Bottleneck),
    "mobilenetv2_x0_25": lambda: MobileNetV2(6, 0.25, 10, 3),
    "shufflenet_v1_small": lambda: ShuffleNetV1([48, 96, 192], [2, 2, 1], 3, 10, 3),
}
MODELS = ["resnet20", "resnet8x4", "wrn_16_2", *SMALL]


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return SMALL[name]() if name in SMALL else build_model(name, 10, 3, 16)


def batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(4, 3, 16, 16, dtype=dtype), torch.randint(0, 10, (4,))


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits


@pytest.mark.parametrize("name", MODELS)
def test_in_place_blocks_give_bit_identical_logits_gradients_and_statistics(name):
    model = make(name).train()
    reference = out_of_place(model)
    assert model.state_dict().keys() == reference.state_dict().keys()
    x, y = batch()
    assert torch.equal(step(model, x, y), step(reference, x, y))
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), key
    for (key, b), c in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(b, c), key  # BN running statistics
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))


def module_paths(model: nn.Module) -> list[str]:
    return [path for path, _ in model.named_modules() if path]


class BareTaps:
    """The same paths recorded by bare hooks (outputs after, inputs before the module), each call kept."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        modules = dict(model.named_modules())
        self.seen: dict[str, list[torch.Tensor]] = {path: [] for path in paths}
        for path in paths:
            name, _, kind = path.partition(":")
            keep = self.seen[path].append
            if kind:
                modules[name].register_forward_pre_hook(lambda _, inputs, keep=keep: keep(inputs[0]))
            else:
                modules[name].register_forward_hook(lambda _, inputs, out, keep=keep: keep(out))

    def __getitem__(self, path: str) -> torch.Tensor:
        return torch.cat(self.seen[path])


@pytest.mark.parametrize("name", MODELS)
def test_every_tap_sees_what_its_module_gave_as_without_in_place_ops(name):
    """All module paths, outputs and inputs: the stages, ``fc:input`` and the pooling input that the
    methods tap, and the BN outputs inside blocks, which the blocks then change in place. In float64: a
    copied feature's gradient is summed in another order, which fp32 cancellation would blur."""
    model = make(name).double().train()
    reference = out_of_place(model)
    paths = module_paths(model)
    paths += [f"{path}:input" for path in paths]
    taps, bare = FeatureTaps(model, paths), BareTaps(reference, paths)
    x, y = batch(torch.float64)
    with taps.record():  # as the engine records: two forward calls, joined along the batch
        logits = torch.cat([model(x[:2]), model(x[2:])])
    ref_logits = torch.cat([reference(x[:2]), reference(x[2:])])
    assert torch.equal(logits, ref_logits)
    for path in paths:
        assert torch.equal(taps[path], bare[path]), path
    weights = {path: torch.randn_like(bare[path]) for path in paths}
    losses = []
    for out, features in ((logits, taps), (ref_logits, bare)):
        losses.append(F.cross_entropy(out, y) + sum((features[p] * weights[p]).sum() for p in paths))
    for loss in losses:
        loss.backward()
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-9 * q.grad.abs().max().item(), msg=key)


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2"])
def test_taps_of_changed_tensors_are_right_under_inference_mode(name):
    """A frozen teacher runs under inference mode, where tensors carry no version counter: the declared
    copies still give each module's output."""
    model = make(name).eval()
    reference = out_of_place(model)
    paths = module_paths(model)
    taps, bare = FeatureTaps(model, paths), BareTaps(reference, paths)
    x, _ = batch()
    with torch.inference_mode(), taps.record():
        model(x)
    with torch.no_grad():
        reference(x)
    for path in paths:
        assert torch.equal(taps[path], bare[path]), path


class Shift(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 1


class ShiftThenRectifyInPlace(nn.Module):
    def __init__(self, declare: bool) -> None:
        super().__init__()
        self.shift = Shift()
        self.inplace_outputs = ("shift",) if declare else ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift(x).relu_()


X = torch.tensor([[-2.0, 3.0]])  # shifted: [[-3, 2]]; rectified: [[0, 2]]


def test_a_declared_in_place_change_is_recorded_before_it_happens():
    model = ShiftThenRectifyInPlace(declare=True)
    with FeatureTaps(model, ["shift"]) as taps:
        assert model(X).tolist() == [[0.0, 2.0]]
        assert taps["shift"].tolist() == [[-3.0, 2.0]]


def test_an_in_place_module_in_a_sequential_leaves_the_taps_before_it_unchanged():
    model = nn.Sequential(Shift(), nn.ReLU(inplace=True))
    with FeatureTaps(model, ["0", "1:input", "1"]) as taps:
        assert model(X).tolist() == [[0.0, 2.0]]
        assert taps["0"].tolist() == taps["1:input"].tolist() == [[-3.0, 2.0]]
        assert taps["1"].tolist() == [[0.0, 2.0]]


def test_an_undeclared_in_place_change_of_a_tapped_tensor_is_an_error_not_a_wrong_feature():
    model = ShiftThenRectifyInPlace(declare=False)
    with FeatureTaps(model, ["shift"]) as taps:
        model(X)
        with pytest.raises(UserError, match="tap 'shift': .* changed in place"):
            taps["shift"]
        with pytest.raises(UserError, match="tap 'shift'"), taps.record():
            model(X)


def test_taps_and_their_copies_trace_into_one_compiled_graph():
    """``train.compile``: the hooks' version bookkeeping must not break the graph dynamo traces."""
    model = build_model("resnet8", 10, 3, 8).train()
    taps = FeatureTaps(model, ["layer2", "fc:input", "layer1.0.bn2", "stem.1"])
    with taps.record():
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 8, 8))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    assert taps["layer1.0.bn2"].shape == (2, 16, 8, 8)
