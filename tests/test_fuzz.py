"""Property-based fuzzing of the config layer and the command line: whatever keys, types, values or YAML
documents come in, the result is a valid config or exit code 2 with one line, and nothing is written."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfdistill import cli
from selfdistill.config import Config, nested, parse_yaml
from selfdistill.engine import Trainer, resolve
from selfdistill.errors import UserError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        out += dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


REAL_KEYS = dotted_keys(Config().to_dict()) + ["method.name", "method.alpha", "method.temperature", "method.dlb.alpha",
                                                "method.forwards", "method.epsilon"]
SECTIONS = [f.name for f in dataclasses.fields(Config)]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["dlb", "ce", "ls", "dlb+ls", "cosine", "multistep", "1e-3", "auto", "mlp", "synthetic"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=6)
keys = st.sampled_from(REAL_KEYS) | st.text(max_size=15)


def one_line_user_error(call) -> None:
    try:
        call()
    except UserError as exc:
        assert len(str(exc).splitlines()) == 1, repr(exc)


@FUZZ
@given(st.text(max_size=200))
def test_any_yaml_text_parses_or_is_one_line(text):
    one_line_user_error(lambda: parse_yaml(text, "--set x"))


YAML_TAGS = ["!!int", "!!float", "!!bool", "!!null", "!!str", "!!binary", "!!timestamp", "!!set", "!!omap", "!!pairs",
             "!!seq", "!!map", "!!merge", "!local"]


@FUZZ
@given(tag=st.sampled_from(YAML_TAGS), value=st.text(max_size=12) | values.map(
       lambda v: yaml.safe_dump(v, default_flow_style=True).strip()), place=st.sampled_from(["{}", "a: {}", "[{}]"]))
def test_a_tagged_value_parses_or_is_one_line(tag, value, place):
    """A tag with a value it cannot hold (`!!int x`, `!!timestamp x`, `!!set 5`) is a YAML error, not a crash of
    PyYAML's constructors."""
    one_line_user_error(lambda: parse_yaml(place.format(f"{tag} {value}"), "--set x"))


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8),
                                st.dictionaries(st.text(max_size=12) | st.sampled_from(REAL_KEYS), values, max_size=4)
                                | values, max_size=4), max_size=3))
def test_any_layers_resolve_or_fail_in_one_line(layers):
    one_line_user_error(lambda: resolve(layers))


@FUZZ
@given(sets=st.lists(st.tuples(keys, values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
                               | st.text(max_size=20)), max_size=4),
       document=st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8), values, max_size=3).map(yaml.safe_dump)
       | st.text(max_size=80))
def test_the_command_line_prints_a_config_that_resolves_again_or_exits_2(tmp_path, capsys, sets, document):
    (tmp_path / "c.yaml").write_text(document)
    args = ["train", "--print-config", "--config", str(tmp_path / "c.yaml")]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    code = cli.main(args)
    out, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("selfdistill: error: ")
    else:  # what it prints is a complete config that resolves to itself
        assert resolve([yaml.safe_load(out)]).to_yaml() == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


TRAIN_KEYS = ["optim.lr", "optim.momentum", "optim.weight_decay", "optim.name", "optim.nesterov", "optim.betas",
              "schedule.name", "schedule.milestones", "schedule.gamma", "schedule.warmup_epochs", "train.epochs",
              "train.seed", "train.eval_every", "train.amp", "data.batch_size", "data.label_noise", "data.mix.name",
              "data.mix.alpha", "data.mix.prob", "data.augment.crop_padding", "data.augment.flip", "data.pad_to",
              "data.train_subset", "data.validation_split", "method.name", "method.alpha", "method.temperature"]
modest = (st.none() | st.booleans() | st.integers(-3, 200) | st.floats(-2, 200) | st.sampled_from(
    ["dlb", "ce", "ls", "cs_kd", "byot", "drg", "mixup", "cutmix", "cosine", "multistep", "sgd", "adamw", "[3, 1]",
     "[0.9, 0.99]", "1e-3", "nan", "x"]))


class Accepted(Exception):
    """Raised by the test's stand-in for training: the run was set up without complaint."""


@FUZZ
@given(sets=st.lists(st.tuples(st.sampled_from(TRAIN_KEYS), modest), max_size=5))
def test_a_run_with_fuzzed_settings_starts_or_exits_2_before_writing(tmp_path, capsys, monkeypatch, sets):
    def stop_before_training(self):
        self._abandon()
        raise Accepted

    monkeypatch.setattr(Trainer, "fit", stop_before_training)
    args = ["train", "--dataset", "synthetic", "--model", "mlp", "--out", str(tmp_path / "run"),
            "--set", "data.synthetic={train_size: 48, test_size: 16, size: 8}", "--set", "train.tensorboard=false"]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    try:
        code = cli.main(args)
    except Accepted:
        code = 0
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("selfdistill: error: "), err
    assert not (tmp_path / "run").exists()


def _default(key: str):
    value = Config().to_dict()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


FLOAT_KEYS = [k for k in REAL_KEYS if isinstance(_default(k), float)]


@FUZZ
@given(key=st.sampled_from([*FLOAT_KEYS, "roles.peer1.optim.lr", "roles.peer1.schedule.min_lr", "method.temperature"]),
       value=st.floats(min_value=3.41e38, allow_infinity=False) | st.integers(min_value=2**128, max_value=10**400),
       sign=st.sampled_from([1, -1]))
def test_a_float_setting_beyond_float32_is_refused_in_one_line(key, value, sign):
    """Every float setting reaches torch, which computes in float32: a larger finite number (`--lr 1e300`)
    is refused naming the key, instead of failing in the middle of training."""
    layers = [{"method": {"name": "dlb"}}, nested(key, sign * value)]
    with pytest.raises(UserError, match=re.escape(key)) as refusal:
        resolve(layers)
    assert len(str(refusal.value).splitlines()) == 1


@pytest.mark.parametrize("text", ["a: 1\na: 2\n", "{a: 1, a: 2}", "train:\n  epochs: 1\n  epochs: 2\n"])
def test_a_key_given_twice_is_an_error(text):
    with pytest.raises(UserError, match="given twice"):
        parse_yaml(text, "--config c.yaml")
