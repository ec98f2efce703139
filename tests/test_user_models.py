"""A user's own architectures: ``package.module:function`` factories, ``register_model`` and the
``selfdistill.models`` entry-point group; every failure is one line."""

import sys

import pytest
import torch
import torch.nn as nn

import selfdistill.models as models
from conftest import write_module
from selfdistill.commands.listings import model_lines
from selfdistill.errors import UserError
from selfdistill.models import (
    FeatureTaps,
    build_model,
    check_model_name,
    faster_in_channels_last_on_cpu,
    is_model_name,
    model_names,
    refresh_entry_points,
    register_model,
    resolve_model_options,
)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# ----------------------------------------------------------------------------- package.module:function
def test_a_user_factory_is_called_with_the_data_shape_and_its_options(user_nets):
    spec = f"{user_nets}:good"
    check_model_name(spec)
    assert is_model_name(spec) and spec not in model_names()
    assert resolve_model_options(spec, {"hidden": 8}) == {"hidden": 8}
    model = build_model(spec, 5, 2, 6, {"hidden": 8, "scale": 0.5})
    assert isinstance(model, nn.Module) and model.arch == spec and model.arch_options == {"hidden": 8, "scale": 0.5}
    assert sys.modules[user_nets].calls[-1] == (5, 2, 6, 8, 0.5)
    assert model(torch.randn(3, 2, 6, 6)).shape == (3, 5)
    assert not faster_in_channels_last_on_cpu(spec)


def test_feature_taps_work_on_a_user_model_by_module_path(user_nets):
    model = build_model(f"{user_nets}:good", 4, 1, 5, {"hidden": 6})
    with FeatureTaps(model, ["body.1", "body", "fc:input"]) as taps:
        logits = model(torch.randn(2, 1, 5, 5))
        assert taps["body.1"].shape == (2, 6)
        assert torch.equal(taps["fc:input"], taps["body"])
        assert torch.allclose(model.fc(taps["fc:input"]), logits)


def test_a_dotted_attribute_and_a_factory_taking_any_keyword(user_nets):
    assert build_model(f"{user_nets}:Holder.build", 3, 1, 4).fc.in_features == 3
    model = build_model(f"{user_nets}:anything", 3, 1, 4, {"depth": 3, "widths": [1, 2], "extra": {"a": None}})
    assert sys.modules[user_nets].calls[-1] == {"depth": 3, "widths": [1, 2], "extra": {"a": None}}
    assert model.arch_options == {"depth": 3, "widths": [1, 2], "extra": {"a": None}}


def test_a_keyword_the_factory_does_not_take_is_named_before_building(user_nets):
    message = one_line_error(resolve_model_options, f"{user_nets}:good", {"hiden": 3})
    assert message == (f"unknown config key 'model.options.hiden' (did you mean 'hidden'?); model.name "
                       f"'{user_nets}:good' takes these keyword arguments: hidden, scale")
    assert sys.modules[user_nets].calls == []
    message = one_line_error(resolve_model_options, f"{user_nets}:raises", {"x": 1}, where="teachers[1].options")
    assert message.startswith("unknown config key 'teachers[1].options.x'") and message.endswith("arguments: none")


def test_options_for_a_user_factory_must_be_plain_yaml(user_nets):
    message = one_line_error(resolve_model_options, f"{user_nets}:anything", {"layer": nn.Linear(1, 1)})
    assert message.startswith("model.options.layer: a Linear is not a plain YAML value")
    message = one_line_error(resolve_model_options, f"{user_nets}:anything", {"x": [float("nan")]})
    assert "model.options.x[0]=nan" in message
    assert "not a Python identifier" in one_line_error(resolve_model_options, f"{user_nets}:anything", {"a-b": 1})


def test_an_unimportable_module_is_one_line(tmp_path, monkeypatch):
    message = one_line_error(build_model, "no_such_pkg_xyz.user_nets:build", 10)
    assert message == ("model.name='no_such_pkg_xyz.user_nets:build': cannot import module 'no_such_pkg_xyz.user_nets' "
                       "(ModuleNotFoundError: No module named 'no_such_pkg_xyz'); it must be importable (an installed "
                       "package, or a directory on PYTHONPATH)")
    broken = write_module(tmp_path, "def build(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = one_line_error(check_model_name, f"{broken}:build", where="teachers[0].model")
    assert message.startswith(f"teachers[0].model='{broken}:build': cannot import module {broken!r} (SyntaxError:")
    assert not is_model_name(f"{broken}:build")


def test_a_missing_or_uncallable_attribute_is_one_line(user_nets):
    message = one_line_error(build_model, f"{user_nets}:godo", 10)
    assert message == f"model.name='{user_nets}:godo': {user_nets} has no attribute 'godo' (did you mean 'good'?)"
    message = one_line_error(check_model_name, f"{user_nets}:VALUE")
    assert message == f"model.name='{user_nets}:VALUE': {user_nets}.VALUE is a int, not a callable that builds a model"
    assert "has no attribute 'nope'" in one_line_error(check_model_name, f"{user_nets}:Holder.nope")


def test_a_factory_that_returns_no_module_or_raises_is_one_line(user_nets):
    message = one_line_error(build_model, f"{user_nets}:not_a_module", 10)
    assert message == f"model.name '{user_nets}:not_a_module' returned int, not a torch.nn.Module"
    message = one_line_error(build_model, f"{user_nets}:raises", 10)
    assert message == f"model.name '{user_nets}:raises' failed to build the model (RuntimeError: boom second line)"
    message = one_line_error(build_model, f"{user_nets}:two_arguments", 10)
    assert message.startswith(f"model.name '{user_nets}:two_arguments' must take (num_classes, in_channels, "
                              "image_size)")


def test_a_malformed_spec_says_the_form():
    message = one_line_error(check_model_name, "pkg.mod:")
    assert message.startswith("model.name='pkg.mod:' is not allowed (a user model is named as package.module:function)")


def test_a_user_model_keeping_its_own_arch_attribute_is_refused(user_nets, tmp_path):
    name = write_module(tmp_path, '''
        import torch.nn as nn

        def build(num_classes, in_channels, image_size):
            model = nn.Linear(in_channels * image_size ** 2, num_classes)
            model.arch = "mine"
            return model
        ''')
    message = one_line_error(build_model, f"{name}:build", 3, 1, 2)
    assert message == (f"model.name '{name}:build': the model has an attribute 'arch' of its own, where selfdistill "
                       "records what built it; rename that attribute")


# ----------------------------------------------------------------------------- register_model
def test_a_registered_builder_takes_its_options_as_keywords(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))

    def tiny(num_classes, in_channels, image_size, width=2):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, width), nn.Linear(width, num_classes))

    register_model("tiny", tiny)
    assert "tiny" in model_names() and is_model_name("tiny")
    model = build_model("tiny", 3, 1, 4, {"width": 5})
    assert model[1].out_features == 5 and model.arch == "tiny" and model.arch_options == {"width": 5}
    assert "did you mean 'width'" in one_line_error(resolve_model_options, "tiny", {"widht": 1})
    register_model("broken", lambda num_classes, in_channels, image_size: "no module")
    assert one_line_error(build_model, "broken", 3) == "model.name 'broken' returned str, not a torch.nn.Module"


# ----------------------------------------------------------------------------- entry points
@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package installed the way pip does: a module and a ``*.dist-info`` with its entry points."""
    module = write_module(tmp_path, '''
        import torch.nn as nn

        def build(num_classes, in_channels, image_size, hidden=4):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden),
                                 nn.Linear(hidden, num_classes))

        VALUE = 1
        ''')
    info = tmp_path / "sd_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sd-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[selfdistill.models]\nplugin_mlp = {module}:build\nplugin_missing = sd_no_such_module_xyz:build\n"
        f"plugin_value = {module}:VALUE\nmlp = {module}:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refresh_entry_points()
    yield module
    refresh_entry_points()
    sys.modules.pop(module, None)


def test_entry_point_names_are_listed_without_importing_them(plugin):
    names = model_names()
    assert {"plugin_mlp", "plugin_missing", "plugin_value"} <= set(names)
    assert names.count("mlp") == 1  # ours wins over a plug-in's name
    assert plugin not in sys.modules


def test_selfdistill_models_lists_an_entry_point_without_importing_it(plugin):
    lines = {line.split()[0]: line.split(None, 1)[1] for line in model_lines()}
    assert lines["plugin_mlp"] == "entry point | options: its keyword arguments"
    assert plugin not in sys.modules


def test_an_entry_point_builds_like_our_names(plugin):
    check_model_name("plugin_mlp")
    model = build_model("plugin_mlp", 3, 1, 4, {"hidden": 7})
    assert model.arch == "plugin_mlp" and model.arch_options == {"hidden": 7} and model[1].out_features == 7
    assert "did you mean 'hidden'" in one_line_error(resolve_model_options, "plugin_mlp", {"hiden": 1})
    assert not faster_in_channels_last_on_cpu("plugin_mlp")
    assert isinstance(build_model("mlp", 3, 1, 4), models.MLP)
    message = one_line_error(check_model_name, "plugin_mpl")
    assert message.startswith("model.name='plugin_mpl' is not allowed (did you mean 'plugin_mlp'?)")


def test_a_broken_entry_point_fails_only_when_used(plugin):
    message = one_line_error(build_model, "plugin_missing", 3)
    assert message == ("model.name='plugin_missing': its entry point 'sd_no_such_module_xyz:build' (group "
                       "selfdistill.models) cannot be loaded (ModuleNotFoundError: No module named "
                       "'sd_no_such_module_xyz')")
    assert not is_model_name("plugin_missing")
    assert "is a int, not a callable" in one_line_error(check_model_name, "plugin_value")
    assert build_model("plugin_mlp", 3, 1, 4).arch == "plugin_mlp"  # the others still work


def test_without_the_plugin_its_names_are_gone(plugin, tmp_path, monkeypatch):
    assert "plugin_mlp" in model_names()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    refresh_entry_points()
    assert "plugin_mlp" not in model_names()
    assert not is_model_name("plugin_mlp")
