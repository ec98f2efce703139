import pytest
import yaml

from selfdistill.config import differences, load_yaml, parse_assignment
from selfdistill.engine import resolve
from selfdistill.errors import UserError


def test_defaults_resolve_and_list_every_method_option():
    config = resolve([{"method": {"name": "dlb"}}])
    assert config.method == {"name": "dlb", "temperature": 3.0, "alpha": 1.0, "forwards": 1,
                             "carry_across_epochs": True, "alpha_warmup_epochs": 0.0}
    assert config.data.dataset == "fashion-mnist-mini"


def test_layers_override_in_order_and_set_values_parse_as_yaml():
    config = resolve([{"train": {"epochs": 5}}, {"train": {"epochs": 7}},
                      parse_assignment("schedule.name=multistep"), parse_assignment("schedule.milestones=[3, 5]"),
                      parse_assignment("method.name=dlb"),
                      parse_assignment("method.alpha=0.5")])
    assert config.train.epochs == 7
    assert config.schedule.milestones == [3, 5]
    assert config.method["alpha"] == 0.5


def test_changing_method_drops_the_previous_methods_options():
    config = resolve([{"method": {"name": "dlb", "alpha": 0.5}}, {"method": {"name": "ce"}}])
    assert config.method == {"name": "ce"}


@pytest.mark.parametrize("layer, field", [
    ({"data": {"nope": 1}}, "data.nope"),
    ({"bogus": {}}, "bogus"),
    ({"method": {"name": "dlb", "beta": 1}}, "method.beta"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"data": {"label_noise": 1.0}}, "data.label_noise"),
    ({"data": {"label_noise": -0.1}}, "data.label_noise"),
    ({"method": {"name": "dlb"}, "data": {"batch_size": 1}}, "data.batch_size"),
    ({"method": {"name": "dlb", "temperature": 0}}, "method.temperature"),
    ({"method": {"name": "dlb", "forwards": 3}}, "method.forwards"),
    ({"optim": {"name": "adam"}}, "optim.name"),
    ({"train": {"amp": "sometimes"}}, "train.amp"),
    ({"model": {"name": "resnet1000"}}, "model.name"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset"),
    ({"method": {"name": "nope"}}, "method.name"),
    ({"schedule": {"milestones": [5, 3]}}, "schedule.milestones"),
])
def test_bad_values_name_the_field_and_what_is_allowed(layer, field):
    with pytest.raises(UserError) as err:
        resolve([layer])
    message = str(err.value)
    assert field in message and "allowed" in message and "\n" not in message


def test_auto_fields_accept_auto_or_booleans():
    assert resolve([{"train": {"amp": True, "channels_last": "auto"}}]).train.amp is True
    assert resolve([{"train": {"amp": False}}]).train.amp is False


def test_combined_methods_take_options_per_member():
    config = resolve([{"method": {"name": "dlb+ce", "dlb": {"alpha": 0.3}}}])
    assert config.method["dlb"]["alpha"] == 0.3
    with pytest.raises(UserError, match="under each"):
        resolve([{"method": {"name": "dlb+ce", "alpha": 0.3}}])


def test_yaml_round_trip_and_differences():
    config = resolve([{"method": {"name": "dlb"}, "train": {"epochs": 3}}])
    again = resolve([yaml.safe_load(config.to_yaml())])
    assert differences(config, again) == []
    changed = resolve([again.to_dict(), {"method": {"alpha": 2.0}}, {"train": {"device": "cpu"}}])
    diff = differences(config, changed)
    assert len(diff) == 1 and diff[0].startswith("method.alpha")  # train.device may change on resume


def test_load_yaml_finds_bundled_recipes_and_rejects_missing_files(tmp_path):
    assert load_yaml("dlb_cifar100")["data"]["dataset"] == "cifar100"
    with pytest.raises(UserError, match="no such file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(bad)


def test_set_needs_key_and_value():
    with pytest.raises(UserError):
        parse_assignment("method.alpha")
    assert parse_assignment("a.b=") == {"a": {"b": ""}}
