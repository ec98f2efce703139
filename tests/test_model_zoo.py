"""The CIFAR-100 KD benchmark's model zoo against facts taken from RepDistiller's model definitions
(tests/fixtures/zoo, see its README), and the loading of the published checkpoints (models/foreign.py)."""

import json
from pathlib import Path

import pytest
import torch

from selfdistill.errors import UserError
from selfdistill.models import ALIASES, MODELS, FeatureTaps, build_model, count_parameters, foreign
from selfdistill.models.foreign import check_state_fits, is_foreign_checkpoint, to_our_keys

FIXTURES = Path(__file__).parent / "fixtures" / "zoo"
REFERENCE = json.loads((FIXTURES / "reference_models.json").read_text())
KEYED = sorted(path.stem for path in (FIXTURES / "state_shapes").glob("*.json"))
OURS_TO_REFERENCE = {ours: theirs for theirs, ours in foreign.REFERENCE_NAMES.items()}
UNIQUE = [name for name in MODELS if name not in ALIASES]
NEEDS_32 = {"vgg16", "vgg19"}  # the DLB-form VGG pools five times


@pytest.fixture(autouse=True)
def one_thread():
    """Forwards of one or two images gain nothing from intra-op threads, and lose much on a busy machine
    (conftest restores the thread count after each test)."""
    torch.set_num_threads(1)


def reference_state(name: str) -> dict[str, torch.Tensor]:
    """Random tensors with the keys and shapes of the reference model's state dict."""
    shapes = json.loads((FIXTURES / "state_shapes" / f"{name}.json").read_text())
    return {key: torch.tensor(240) if key.endswith("num_batches_tracked") else torch.randn(shape)
            for key, shape in shapes.items()}


def published_checkpoint(name: str) -> dict:
    """What RepDistiller's train_teacher.py writes as ckpt_epoch_240.pth, with random weights."""
    return {"epoch": 240, "model": reference_state(name), "accuracy": 72.3,
            "optimizer": {"state": {}, "param_groups": []}}


def test_the_zoo_has_every_reference_name_and_the_aliases():
    assert set(foreign.REFERENCE_NAMES) == set(REFERENCE)
    assert all(ours in MODELS for ours in foreign.REFERENCE_NAMES.values())
    assert all(alias in MODELS for alias in ("mobilenetv2_x0_5", "shufflenetv1", "shufflenetv2", "resnet50_cifar"))
    assert all(MODELS[alias] is MODELS[name] for alias, name in ALIASES.items())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_parameter_count_equals_the_reference(name):
    model = build_model(foreign.REFERENCE_NAMES[name], 100, 3, 32)
    assert count_parameters(model) == REFERENCE[name]["parameters"]


@pytest.mark.parametrize("name", KEYED)
def test_published_checkpoint_loads_strictly_after_the_key_map(name):
    checkpoint = published_checkpoint(name)
    assert is_foreign_checkpoint(checkpoint)
    ours = foreign.REFERENCE_NAMES[name]
    mapped = to_our_keys(ours, checkpoint["model"])
    model = build_model(ours, 100, 3, 32)
    assert len(mapped) == len(checkpoint["model"])  # no two reference keys land on one of ours
    assert set(mapped) == set(model.state_dict())  # every one of our keys is covered
    check_state_fits(model, mapped, f"teacher {name}")
    model.load_state_dict(mapped, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in mapped.items())


@pytest.mark.parametrize("name, channels, size", [(n, c, s) for n in UNIQUE for c, s in ((3, 32), (1, 28))])
def test_head_of_the_last_stage_and_fc_input(name, channels, size):
    size = 32 if name in NEEDS_32 else size
    model = build_model(name, 10, channels, size).eval()
    last = model.stages[-1]
    x = torch.randn(2, channels, size, size)
    with torch.no_grad(), FeatureTaps(model, [last, "fc:input"]) as taps:
        logits = model(x)
        assert logits.shape == (2, 10)
        assert torch.allclose(model.head(taps[last]), logits, atol=1e-5)
        assert taps["fc:input"].shape == (2, model.fc.in_features)
        assert torch.allclose(model.fc(taps["fc:input"]), logits, atol=1e-5)
    reference = REFERENCE.get(OURS_TO_REFERENCE.get(name, ""))
    if reference and (channels, size) == (3, 32):  # the maps SP/CA-MKD (feat[-2]) and CRD (feat[-1]) take
        assert list(taps[last].shape[1:]) == reference["feat[-2]"]
        assert list(taps["fc:input"].shape[1:]) == reference["feat[-1]"]
    assert not is_foreign_checkpoint({"epoch": 1, "config": {}, "model": model.state_dict()})


@pytest.mark.parametrize("arch, theirs, ours", [
    ("resnet32x4", "conv1.weight", "stem.0.weight"),
    ("resnet32x4", "bn1.running_var", "stem.1.running_var"),
    ("resnet32x4", "layer2.0.downsample.1.weight", "layer2.0.shortcut.1.weight"),
    ("resnet56", "layer3.8.bn2.bias", "layer3.8.bn2.bias"),
    ("resnet56", "fc.weight", "fc.weight"),
    ("ResNet50", "conv1.weight", "stem.0.weight"),
    ("ResNet50", "layer4.0.shortcut.0.weight", "layer4.0.shortcut.0.weight"),
    ("ResNet50", "linear.bias", "fc.bias"),
    ("wrn_40_2", "conv1.weight", "stem.weight"),
    ("wrn_40_2", "block1.layer.0.bn1.weight", "layer1.0.bn1.weight"),
    ("wrn_40_2", "block2.layer.0.convShortcut.weight", "layer2.0.shortcut.weight"),
    ("wrn_40_2", "block3.layer.5.conv2.weight", "layer3.5.conv2.weight"),
    ("wrn_40_2", "bn1.num_batches_tracked", "pool.0.num_batches_tracked"),
    ("vgg13", "block0.1.running_mean", "layer1.body.1.running_mean"),
    ("vgg13", "block4.3.weight", "layer5.body.3.weight"),
    ("vgg13", "classifier.weight", "fc.weight"),
    ("MobileNetV2", "conv1.0.weight", "conv1.0.weight"),
    ("MobileNetV2", "blocks.0.0.conv.0.weight", "layer1.0.0.conv.0.weight"),
    ("MobileNetV2", "blocks.1.1.conv.4.bias", "layer1.1.1.conv.4.bias"),
    ("MobileNetV2", "blocks.2.2.conv.7.weight", "layer2.0.2.conv.7.weight"),
    ("MobileNetV2", "blocks.4.0.conv.3.weight", "layer3.1.0.conv.3.weight"),
    ("MobileNetV2", "blocks.6.0.conv.6.weight", "layer4.1.0.conv.6.weight"),
    ("MobileNetV2", "classifier.0.weight", "fc.weight"),
    ("ShuffleV1", "layer1.0.conv3.weight", "layer1.0.conv3.weight"),
    ("ShuffleV1", "linear.weight", "fc.weight"),
    ("ShuffleV2", "layer3.0.conv5.weight", "layer3.0.conv5.weight"),
    ("ShuffleV2", "linear.weight", "fc.weight"),
])
def test_key_map_renames_by_the_reference_layout(arch, theirs, ours):
    tensor = torch.zeros(1)
    assert to_our_keys(arch, {theirs: tensor}) == {ours: tensor}
    assert to_our_keys(arch, {f"module.{theirs}": tensor}) == {ours: tensor}  # a DataParallel prefix


def test_every_mapped_architecture_is_in_the_zoo():
    assert set(foreign.ARCH_SOURCE) <= set(MODELS)


def test_key_map_refuses_architectures_without_one():
    with pytest.raises(UserError, match="model='densenet40_k12' is not allowed; allowed: resnet8"):
        to_our_keys("densenet40_k12", {})
    with pytest.raises(UserError, match="RepDistiller's vgg16 is our vgg16_bn"):
        to_our_keys("vgg16", {})


def test_other_objects_are_not_foreign_checkpoints():
    state = reference_state("resnet8x4")
    assert not is_foreign_checkpoint(state)  # a bare state dict, not RepDistiller's checkpoint
    assert not is_foreign_checkpoint({"model": {}})
    assert not is_foreign_checkpoint(None)
    assert is_foreign_checkpoint({"model": state})


def fits_message(arch: str, state: dict[str, torch.Tensor]) -> str:
    with pytest.raises(UserError) as caught:
        check_state_fits(build_model(arch, 100, 3, 32), state, "teacher runs/x.pth")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_check_state_fits_names_the_first_shape_that_disagrees():
    # resnet56's stem has 16 filters, resnet32x4's 32; the stem is the first key of both
    message = fits_message("resnet32x4", to_our_keys("resnet56", reference_state("resnet56")))
    assert message == ("teacher runs/x.pth does not fit resnet32x4: stem.0.weight has shape [16, 3, 3, 3] in the "
                       "file, [32, 3, 3, 3] in the model")


def test_check_state_fits_names_the_first_missing_and_unexpected_key():
    state = to_our_keys("resnet8x4", reference_state("resnet8x4"))
    truncated = dict(list(state.items())[:-2])  # drops fc.weight and fc.bias
    assert fits_message("resnet8x4", truncated).endswith(": fc.weight is in the model but not in the file")
    extra = {**state, "layer4.0.conv1.weight": torch.zeros(1)}
    assert fits_message("resnet8x4", extra).endswith(": layer4.0.conv1.weight is in the file but not in the model")


def test_check_state_fits_ignores_batchnorm_counters():
    state = to_our_keys("wrn_16_2", reference_state("wrn_16_2"))
    check_state_fits(build_model("wrn_16_2", 100, 3, 32), state, "teacher")
    without = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_state_fits(build_model("wrn_16_2", 100, 3, 32), without, "teacher")
