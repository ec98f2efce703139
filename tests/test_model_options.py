"""model.options: each architecture's knobs, checked like every config key, defaults that build exactly the
networks the bare names built, and Hinton et al. (2015)'s MNIST MLPs."""

import pytest
import torch

from selfdistill.errors import UserError
from selfdistill.models import (
    ALIASES,
    MODELS,
    FeatureTaps,
    build_model,
    count_parameters,
    resolve_model_options,
    tap_names,
)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def user_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- defaults are today's networks
def test_the_default_mlp_is_784_512_256_classes():
    model = build_model("mlp", 10, 1, 28)
    assert shapes(model) == {"layer1.1.weight": (512, 784), "layer1.1.bias": (512,), "layer2.0.weight": (256, 512),
                             "layer2.0.bias": (256,), "fc.weight": (10, 256), "fc.bias": (10,)}
    assert model.stages == ("layer1", "layer2") and model.arch_options == {"hidden": [512, 256], "dropout": 0.0,
                                                                           "input_dropout": 0.0}
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # the same modules as before


def test_the_default_cnn_has_width_32():
    model = build_model("cnn", 10, 1, 28)
    by_hand = (1 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64) + (64 * 128 * 9 + 2 * 128) + (128 * 10 + 10)
    assert count_parameters(model) == by_hand == 94186
    assert model.arch_options == {"width": 32}


@pytest.mark.parametrize("name, width, stem, last", [("resnet8", 1, 16, 64), ("resnet32", 1, 16, 64),
                                                     ("resnet8x4", 4, 32, 256), ("resnet32x4", 4, 32, 256)])
def test_each_cifar_resnet_name_means_its_width(name, width, stem, last):
    model = build_model(name, 100, 3)
    assert model.arch_options == {"width": width}
    assert shapes(model)["stem.0.weight"] == (stem, 3, 3, 3)
    assert shapes(model)["layer1.0.conv1.weight"] == (16 * width, stem, 3, 3)
    assert shapes(model)["fc.weight"] == (100, last)


def test_defaults_given_explicitly_build_the_same_network():
    for name, options in [("mlp", {"hidden": [512, 256], "dropout": 0, "input_dropout": 0}), ("cnn", {"width": 32}),
                          ("resnet8x4", {"width": 4}), ("wrn16_1", {"dropout": 0}),
                          ("MobileNetV2", {"width_mult": 0.5, "expansion": 6})]:
        torch.manual_seed(0)
        bare = build_model(name, 10, 3, 32)
        torch.manual_seed(0)
        explicit = build_model(name, 10, 3, 32, options)
        assert shapes(bare) == shapes(explicit), name
        assert all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(), explicit.state_dict().values()))
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(bare.eval()(x), explicit.eval()(x)), name


def test_every_architecture_resolves_its_options_and_rebuilds_from_them():
    for name in MODELS:
        options = resolve_model_options(name)
        assert resolve_model_options(name, options) == options
    assert resolve_model_options("vgg8") == {} and resolve_model_options("ShuffleV2") == {}
    for alias, name in ALIASES.items():
        assert resolve_model_options(alias) == resolve_model_options(name)
    model = build_model("resnet8", 10, 3, 32, {"width": 2})
    rebuilt = build_model(model.arch, 10, 3, 32, model.arch_options)
    assert shapes(rebuilt) == shapes(model)


# ----------------------------------------------------------------------------- each option does what it says
def test_mlp_hidden_sets_the_number_and_width_of_hidden_layers():
    model = build_model("mlp", 7, 1, 12, {"hidden": [30, 20, 10]})
    assert model.stages == ("layer1", "layer2", "layer3") == tuple(tap_names(model))
    assert shapes(model)["layer1.1.weight"] == (30, 144) and shapes(model)["layer3.0.weight"] == (10, 20)
    assert shapes(model)["fc.weight"] == (7, 10)
    model.eval()
    x = torch.randn(3, 1, 12, 12)
    with FeatureTaps(model, ["layer3", "fc:input"]) as taps:
        logits = model(x)
        assert taps["layer3"].shape == (3, 10)
        assert torch.equal(model.head(taps["layer3"]), logits)
    one = build_model("mlp", 7, 1, 12, {"hidden": [5]})
    assert one.stages == ("layer1",) and shapes(one)["fc.weight"] == (7, 5)


def test_hinton_2015_mnist_teacher_and_student():
    teacher = build_model("mlp", 10, 1, 28, {"hidden": [1200, 1200], "dropout": 0.5, "input_dropout": 0.2})
    # 784-1200-1200-10
    assert count_parameters(teacher) == (784 * 1200 + 1200) + (1200 * 1200 + 1200) + (1200 * 10 + 10)
    student = build_model("mlp", 10, 1, 28, {"hidden": [800, 800]})
    assert count_parameters(student) == (784 * 800 + 800) + (800 * 800 + 800) + (800 * 10 + 10)  # 784-800-800-10
    assert [m.p for m in teacher.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.5, 0.5]
    assert not any(isinstance(m, torch.nn.Dropout) for m in student.modules())
    assert teacher(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_mlp_dropout_is_on_in_training_and_off_in_evaluation():
    model = build_model("mlp", 10, 1, 28, {"hidden": [400, 400], "dropout": 0.5, "input_dropout": 0.2})
    x = torch.rand(64, 1, 28, 28) + 0.1  # no zero pixels of its own
    with FeatureTaps(model, ["layer1.1:input", "layer1", "layer2"]) as taps:
        model.train()
        torch.manual_seed(0)
        first = model(x)
        assert (taps["layer1.1:input"] == 0).float().mean().item() == pytest.approx(0.2, abs=0.02)
        relu = torch.relu(model.layer1[1](taps["layer1.1:input"]))  # before the hidden dropout
        kept = taps["layer1"][relu > 0]
        assert (kept == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
        assert not torch.equal(first, model(x))  # another mask
        model.eval()
        assert torch.equal(model(x), model(x))
        assert torch.equal(taps["layer1.1:input"], x.flatten(1))  # the input as it is
        assert torch.equal(taps["layer2"], torch.relu(model.layer2[0](taps["layer1"])))


def test_cnn_width_scales_the_three_stages():
    model = build_model("cnn", 10, 3, 32, {"width": 8})
    assert shapes(model)["layer1.0.0.weight"] == (8, 3, 3, 3)
    assert shapes(model)["layer3.0.weight"] == (32, 16, 3, 3) and shapes(model)["fc.weight"] == (10, 32)


def test_cifar_resnet_width_turns_one_form_into_the_other():
    assert shapes(build_model("resnet8", 100, 3, 32, {"width": 4})) == shapes(build_model("resnet8x4", 100, 3, 32))
    assert shapes(build_model("resnet32x4", 100, 3, 32, {"width": 1})) == shapes(build_model("resnet32", 100, 3, 32))
    wide = build_model("resnet20", 10, 3, 32, {"width": 2})
    assert shapes(wide)["stem.0.weight"] == (16, 3, 3, 3) and shapes(wide)["fc.weight"] == (10, 128)


def test_wrn_dropout_is_random_in_training_only():
    x = torch.randn(8, 3, 32, 32)
    plain = build_model("wrn16_1", 10, 3, 32).train()
    assert torch.equal(plain(x), plain(x))
    dropped = build_model("wrn16_1", 10, 3, 32, {"dropout": 0.3})
    assert shapes(dropped) == shapes(plain)
    assert all(block.dropout == 0.3 for block in dropped.layer2)
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))
    dropped.eval()
    assert torch.equal(dropped(x), dropped(x))


def test_mobilenetv2_width_mult_and_expansion():
    full = build_model("MobileNetV2", 100, 3, 32, {"width_mult": 1.0})
    assert shapes(full)["conv1.0.weight"] == (32, 3, 3, 3) and shapes(full)["fc.weight"] == (100, 1280)
    half = build_model("mobilenetv2_x0_5", 100, 3, 32)
    assert shapes(half)["conv1.0.weight"] == (16, 3, 3, 3)
    narrow = build_model("MobileNetV2", 100, 3, 32, {"expansion": 2})
    assert shapes(narrow)["layer1.1.0.conv.0.weight"] == (16, 8, 1, 1)  # 8 channels in, expanded 2x
    assert shapes(half)["layer1.1.0.conv.0.weight"] == (48, 8, 1, 1)


# ----------------------------------------------------------------------------- refusals
def test_an_unknown_option_is_refused_with_a_suggestion():
    message = user_error(resolve_model_options, "mlp", {"hiden": [1200, 1200]})
    assert message == ("unknown config key 'model.options.hiden' (did you mean 'hidden'?); allowed: hidden, dropout, "
                       "input_dropout")
    assert "did you mean 'width'" in user_error(build_model, "cnn", 10, 1, 28, {"widht": 8})


def test_a_value_of_the_wrong_type_or_range_is_refused():
    assert user_error(resolve_model_options, "mlp", {"hidden": 1200}) == \
        "model.options.hidden=1200 is not allowed; allowed: a list of int"
    assert "model.options.hidden[1]='wide'" in user_error(resolve_model_options, "mlp", {"hidden": [10, "wide"]})
    assert "model.options.hidden=[]" in user_error(resolve_model_options, "mlp", {"hidden": []})
    assert "model.options.hidden=[0]" in user_error(resolve_model_options, "mlp", {"hidden": [0]})
    assert "model.options.dropout=1.0" in user_error(resolve_model_options, "mlp", {"dropout": 1.0})
    assert "model.options.input_dropout=-0.1" in user_error(resolve_model_options, "mlp", {"input_dropout": -0.1})
    assert "model.options.width=True" in user_error(resolve_model_options, "cnn", {"width": True})
    assert "model.options.width=0" in user_error(resolve_model_options, "resnet8", {"width": 0})
    assert "model.options.width_mult=0.01" in user_error(resolve_model_options, "MobileNetV2", {"width_mult": 0.01})
    assert "model.options.dropout=1.5" in user_error(resolve_model_options, "wrn40_2", {"dropout": 1.5})
    assert "must be a mapping" in user_error(resolve_model_options, "mlp", [1200])


def test_values_are_coerced_as_for_every_config_key():
    assert resolve_model_options("mlp", {"hidden": ["1200", 800.0], "dropout": "0.5"}) == \
        {"hidden": [1200, 800], "dropout": 0.5, "input_dropout": 0.0}
    assert resolve_model_options("mlp", {"hidden": (3, 4)})["hidden"] == [3, 4]


@pytest.mark.parametrize("name", ["resnet18", "ResNet50", "vgg8", "vgg16", "densenet40_k12", "ShuffleV1",
                                  "shufflenetv2"])
def test_an_architecture_without_options_refuses_any(name):
    message = user_error(resolve_model_options, name, {"width": 2})
    assert message == f"unknown config key 'model.options.width': architecture {name!r} takes no options"
    assert resolve_model_options(name, {}) == {} and resolve_model_options(name, None) == {}


def test_where_names_a_teachers_fields():
    message = user_error(resolve_model_options, "mlp", {"hiden": [1]}, where="teachers[0].options")
    assert message.startswith("unknown config key 'teachers[0].options.hiden'")
    message = user_error(resolve_model_options, "mpl", {}, where="teachers[0].options", name_where="teachers[0].model")
    assert message.startswith("teachers[0].model='mpl' is not allowed (did you mean 'mlp'?)")


def test_an_unknown_name_is_refused_with_a_suggestion():
    message = user_error(build_model, "resnet8x5", 10)
    assert message.startswith("model.name='resnet8x5' is not allowed (did you mean 'resnet8x4'?); allowed: mlp, cnn")
    assert message.endswith("or package.module:function for your own")
