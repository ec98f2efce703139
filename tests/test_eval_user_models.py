"""``eval`` and ``selfdistill.load_model`` on a user's own architectures (a ``package.module:function`` spec, a
name from ``register_model``), per-class results by class name, and damaged model cards: one line, never a
traceback."""

import csv
import importlib
import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import selfdistill
import selfdistill.models as models
from conftest import cli_main, run_cli, small_config
from selfdistill.analysis.evaluation import evaluate_saved_model
from selfdistill.data import DATASETS
from selfdistill.data.image_folder import folder_tree
from selfdistill.data.tree import class_names
from selfdistill.engine import train
from selfdistill.errors import UserError
from selfdistill.models import register_model


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def train_run(path, model, epochs=1):
    return train(small_config(model=model, train={"epochs": epochs, "progress": False, "threads": 1}), path)


# ----------------------------------------------------------------------------- package.module:function
def test_a_run_of_a_user_spec_evaluates_in_another_process_when_its_module_is_importable(user_nets, tmp_path):
    run = tmp_path / "run"
    metrics = train_run(run, {"name": f"{user_nets}:good", "options": {"hidden": 8}})
    done = run_cli("eval", str(run), "--device", "cpu", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    result = json.loads((run / "eval-synthetic-test" / "eval.json").read_text())
    assert result["model"] == f"{user_nets}:good" and result["top1"] == pytest.approx(metrics["test_top1"])


def test_a_user_spec_whose_module_is_gone_is_one_line_naming_the_card(user_nets, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train_run(run, {"name": f"{user_nets}:good"})
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    sys.modules.pop(user_nets)
    capsys.readouterr()  # training's lines
    code, out, err = cli_main(capsys, "eval", str(run), "--device", "cpu")
    assert code == 2 and out == "" and err == [
        f"selfdistill: error: {run / 'model.json'}: model={user_nets + ':good'!r}: cannot import module {user_nets!r} "
        f"(ModuleNotFoundError: No module named {user_nets!r}); it must be importable (an installed package, or a "
        "directory on PYTHONPATH)"]
    assert not (run / "eval-synthetic-test").exists()


# ----------------------------------------------------------------------------- register_model
@pytest.fixture
def registered_run(user_nets, tmp_path, monkeypatch, capsys):
    """A run of ``tiny`` (the user's ``good`` factory with hidden=8) registered with register_model, and the
    registration gone again, as in another process."""
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    register_model("tiny", importlib.import_module(user_nets).good)
    run = tmp_path / "run"
    metrics = train_run(run, {"name": "tiny", "options": {"hidden": 8}})
    del models.MODELS["tiny"]
    capsys.readouterr()  # training's lines
    return run, metrics, user_nets


def test_a_registered_name_unknown_here_says_what_to_do(registered_run, capsys):
    run, _, _ = registered_run
    code, out, err = cli_main(capsys, "eval", str(run), "--device", "cpu")
    card = run / "model.json"
    assert code == 2 and out == "" and err == [
        f"selfdistill: error: {card}: model 'tiny' is not an architecture known here (a name added with "
        "register_model in the process that trained it?); evaluate it with --model package.module:function naming "
        "the same factory, register that factory as an entry point (group selfdistill.models), or load it in "
        "Python with selfdistill.load_model after register_model('tiny', ...)"]
    message = one_line_error(selfdistill.load_model, run)
    assert message.startswith(f"{card}: model 'tiny' is not an architecture known here") and \
        message.endswith("call selfdistill.register_model('tiny', factory) with the factory that built it before "
                         "load_model, or register that factory as an entry point (group selfdistill.models)")
    assert not (run / "eval-synthetic-test").exists()
    code, out, err = cli_main(capsys, "report", str(run), "--no-plots")  # report builds no network
    assert code == 0 and err == [] and "| synthetic | tiny | ce | test |" in out


def test_a_registered_run_evaluates_with_model_naming_the_same_factory_and_its_options(registered_run, capsys):
    run, metrics, user_nets = registered_run
    code, out, err = cli_main(capsys, "eval", str(run), "--model", f"{user_nets}:good", "--device", "cpu")
    assert code == 0, err
    result = json.loads((run / "eval-synthetic-test" / "eval.json").read_text())
    assert result["top1"] == pytest.approx(metrics["test_top1"]) and result["nll"] == pytest.approx(metrics["test_nll"])
    assert sys.modules[user_nets].calls[-1] == (10, 1, 12, 8, 1.0)  # the card's hidden=8, not the default 16


def test_load_model_rebuilds_a_registered_name_after_register_model(registered_run):
    run, _, user_nets = registered_run
    register_model("tiny", sys.modules[user_nets].good)
    net, card = selfdistill.load_model(run)
    assert card.model == "tiny" and card.options == {"hidden": 8} and net.fc.in_features == 8
    state = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- class names
def test_per_class_results_by_number_where_the_dataset_has_no_names(tmp_path, capsys):
    run = tmp_path / "run"
    train_run(run, {"name": "mlp"})
    capsys.readouterr()
    code, out, _ = cli_main(capsys, "eval", str(run), "--device", "cpu")
    assert code == 0 and "\n  0:" in out
    result = json.loads((run / "eval-synthetic-test" / "eval.json").read_text())
    rows = list(csv.DictReader((run / "eval-synthetic-test" / "per_class.csv").read_text().splitlines()))
    assert result["class_names"] is None and [r["name"] for r in rows] == [""] * 10


def test_image_folder_classes_are_named_by_words_txt(tmp_path):
    for wnid in ("n02", "n01", "n03", "n04"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
    (tmp_path / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tcrane\nn03\tcrane\nn09\tother\n")
    classes = ["n01", "n02", "n03", "n04"]
    assert class_names(folder_tree(tmp_path), classes) == ("goldfish", "n02", "n03", "n04")  # shared: the folder's
    (tmp_path / "words.txt").write_bytes(b"\xff\xfe")
    assert class_names(folder_tree(tmp_path), classes) == ("n01", "n02", "n03", "n04")


def test_named_datasets_have_one_name_per_class():
    for name in ("fashion-mnist", "fashion-mnist-mini", "cifar10"):
        assert len(DATASETS[name].class_names(None)) == 10
    assert DATASETS["mnist"].class_names(None) is None and DATASETS["cifar100"].class_names(None) is None


# ----------------------------------------------------------------------------- damaged files
@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train_run(run, {"name": "mlp", "options": {"hidden": [16]}})
    return run


@pytest.mark.parametrize("name, role, match", [
    ("model.json", None, "model.json: not a model card (JSON nested too deeply)"),
    ("metrics.json", "student", "metrics.json cannot be read, so the run's networks are not known"),
])
def test_json_nested_too_deeply_is_one_line(mlp_run, tmp_path, capsys, name, role, match):
    run = tmp_path / "run"
    run.mkdir()
    for f in ("model.pt", "model.json", "metrics.json"):
        (run / f).write_bytes((mlp_run / f).read_bytes())
    (run / name).write_text("[" * 200_000)
    code, out, err = cli_main(capsys, "eval", str(run), "--device", "cpu", *(["--role", role] if role else []))
    assert code == 2 and len(err) == 1 and match in err[0]


scalars = (st.none() | st.booleans() | st.integers(-3, 40) | st.floats() | st.text(max_size=6)
           | st.sampled_from(["mlp", "cnn", "synthetic", "mnist-x", "selfdistill-model", "a:b", "os:getcwd"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6) | st.sampled_from(["hidden", "dropout", "width"]), inner, max_size=3), max_leaves=6)
CARD_FIELDS = ["format", "version", "model", "num_classes", "in_channels", "image_size", "pad_to", "mean", "std",
               "dataset", "method", "options"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(CARD_FIELDS) | st.text(max_size=5), values, max_size=3),
       deep=st.sampled_from(CARD_FIELDS + [None]), depth=st.integers(1, 3000))
def test_any_model_card_fields_evaluate_or_fail_in_one_line(mlp_run, tmp_path_factory, changes, deep, depth):
    card = json.loads((mlp_run / "model.json").read_text())
    if isinstance(changes.get("dataset"), str) and changes["dataset"] in DATASETS:
        changes["dataset"] = "synthetic"  # never a download
    text = json.dumps({**card, **changes})
    if deep is not None:
        text = json.dumps({**card, deep: "<deep>"}).replace('"<deep>"', "[" * depth + "]" * depth)
    (mlp_run / "model.json").write_text(text)
    out = tmp_path_factory.mktemp("out")
    try:
        for call in (lambda: evaluate_saved_model(mlp_run, device="cpu", out=out),
                     lambda: selfdistill.load_model(mlp_run)):
            try:
                call()
            except UserError as exc:
                assert "\n" not in str(exc)
    finally:
        (mlp_run / "model.json").write_text(json.dumps(card))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metrics=values | st.dictionaries(st.sampled_from(["networks", "eval_split", "test_top1"]) | st.text(max_size=5),
                                        values, max_size=3),
       role=st.sampled_from([None, "student", "peer1"]), depth=st.sampled_from([0, 2000]))
def test_any_metrics_json_lets_eval_evaluate_or_fail_in_one_line(mlp_run, tmp_path_factory, metrics, role, depth):
    saved = (mlp_run / "metrics.json").read_text()
    text = json.dumps(metrics) if not depth else json.dumps({"networks": "<deep>"}).replace(
        '"<deep>"', "[" * depth + "]" * depth)
    (mlp_run / "metrics.json").write_text(text)
    try:
        result = evaluate_saved_model(mlp_run, device="cpu", out=tmp_path_factory.mktemp("out"), role=role)
        assert role in (None, "student") and result["role"] in (None, "student")
    except UserError as exc:
        assert "\n" not in str(exc)
    finally:
        (mlp_run / "metrics.json").write_text(saved)
