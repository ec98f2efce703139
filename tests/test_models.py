import pytest
import torch

from selfdistill.errors import UserError
from selfdistill.models import MODELS, FeatureTaps, build_model, count_parameters, tap_names

SMALL_INPUT = {"vgg16": 32, "vgg19": 32}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_class_logits(name):
    size = SMALL_INPUT.get(name, 28)
    model = build_model(name, num_classes=7, in_channels=1, image_size=size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 7)
    assert all(hasattr(model, stage) for stage in tap_names(model))
    assert isinstance(model.fc, torch.nn.Linear)


@pytest.mark.parametrize("name, millions", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet110", 1.73),
                                            ("wrn28_10", 36.5), ("densenet100_k12", 0.77), ("resnet18", 11.17)])
def test_parameter_counts_match_the_standard_architectures(name, millions):
    model = build_model(name, num_classes=10, in_channels=3)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, rel=0.03)


def test_vgg_on_small_inputs_explains_the_fix():
    with pytest.raises(UserError, match="pad_to=32"):
        build_model("vgg16", 10, 1, 28)


def test_feature_taps_capture_stage_outputs_and_head_inputs():
    model = build_model("resnet8", 10, 3)
    with FeatureTaps(model, ["layer2", "fc:input"]) as taps:
        logits = model(torch.randn(4, 3, 32, 32))
        assert taps["layer2"].shape == (4, 32, 16, 16)
        assert torch.allclose(model.fc(taps["fc:input"]), logits)
    model(torch.randn(1, 3, 32, 32))
    assert taps["layer2"].shape[0] == 4  # hooks removed after the with-block


def test_feature_taps_name_the_allowed_stages():
    with pytest.raises(UserError, match="layer1, layer2, layer3"):
        FeatureTaps(build_model("resnet8", 10, 3), ["layer9"])
