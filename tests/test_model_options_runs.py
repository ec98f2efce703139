"""model.options and a user's own architecture through the whole tool: config, training, the model card,
--teacher, eval, and the one-line refusals (the models layer's own tests are test_model_options.py and
test_user_models.py)."""

import json

import pytest
import torch

from conftest import cli_main, small_config
from selfdistill.analysis.evaluation import evaluate_saved_model
from selfdistill.engine import Trainer, resolve, train
from selfdistill.errors import UserError
from selfdistill.methods import Batch, Outputs
from selfdistill.models import build_model
from selfdistill.models.card import read_model_card
from selfdistill.models.teachers import DataShape, TeacherSpec, load_teacher, parse_teacher

WIDE = {"hidden": [40, 24, 16], "dropout": 0.25}
SYNTHETIC_ARGS = ["--dataset", "synthetic", "--set", "data.synthetic.train_size=96", "--set",
                  "data.synthetic.test_size=64", "--set", "data.synthetic.size=12", "--set", "train.progress=false"]


@pytest.fixture
def user_module(user_nets):
    """``package.module:function`` of a user's factory: ``Net`` (``body``, ``fc``), ``hidden`` units (16)."""
    return f"{user_nets}:good"


def test_options_are_resolved_in_full_and_a_new_model_name_drops_them():
    config = small_config(model={"name": "mlp", "options": {"hidden": [30]}})
    assert config.model.options == {"hidden": [30], "dropout": 0.0, "input_dropout": 0.0}
    default = resolve([])
    assert default.model.options == {"width": 32}  # the defaults are recorded too
    swapped = resolve([{"model": {"name": "mlp", "options": {"hidden": [30]}}}, {"model": {"name": "cnn"}}])
    assert swapped.model.options == {"width": 32}


def test_the_run_records_the_options_and_a_teacher_run_rebuilds_that_network(tmp_path):
    config = small_config(model={"name": "mlp", "options": WIDE})
    train(config, tmp_path / "t")
    card = read_model_card(tmp_path / "t" / "model.pt")
    assert card.options == {**WIDE, "input_dropout": 0.0}
    saved = torch.load(tmp_path / "t" / "model.pt", weights_only=True)
    shape = DataShape(card.num_classes, card.in_channels, card.image_size, card.mean, card.std)
    teacher = load_teacher(TeacherSpec(str(tmp_path / "t")), shape)
    assert [m.out_features for m in teacher.net.modules() if isinstance(m, torch.nn.Linear)] == [40, 24, 16, 10]
    reference = build_model("mlp", card.num_classes, 1, card.image_size, card.options)
    reference.load_state_dict(saved)
    x = torch.randn(5, 1, card.image_size, card.image_size)
    assert torch.equal(teacher.net(x), reference.eval()(x))
    metrics = train(small_config(method={"name": "kd"}, teachers=[str(tmp_path / "t")]))
    assert metrics["teacher_test_top1"] == evaluate_saved_model(str(tmp_path / "t"))["top1"]


def test_a_dml_peer_like_the_student_has_the_student_s_options(tmp_path):
    trainer = Trainer(small_config(method={"name": "dml"}, model={"name": "mlp", "options": {"hidden": [21]}}))
    peer = next(net for net in trainer.nets if net.role != "student")
    assert peer.model.layer1[1].out_features == 21 and trainer.model.layer1[1].out_features == 21


def test_an_unknown_option_is_one_line_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli_main(capsys, "train", "--model", "mlp", "--set", "model.options.hiden=[3]", "--out", str(out))
    assert code == 2 and len(err) == 1 and "model.options.hiden" in err[0] and "did you mean 'hidden'" in err[0]
    assert not out.exists()
    code, _, err = cli_main(capsys, "train", "--model", "resnet18", "--set", "model.options.width=2")
    assert code == 2 and err == ["selfdistill: error: unknown config key 'model.options.width': architecture "
                                 "'resnet18' takes no options"]


def test_a_card_from_before_options_means_the_defaults(tmp_path):
    train(small_config(), tmp_path / "old")
    card_file = tmp_path / "old" / "model.json"
    raw = json.loads(card_file.read_text())
    del raw["options"]
    card_file.write_text(json.dumps(raw))
    assert read_model_card(tmp_path / "old" / "model.pt").options == {}
    assert evaluate_saved_model(str(tmp_path / "old"))["top1"] >= 0


def test_a_user_model_trains_saves_evaluates_and_teaches(tmp_path, user_module, capsys):
    run = tmp_path / "u"
    code, out, err = cli_main(capsys, "train", "--model", user_module, "--set", "model.options.hidden=12",
                              "--epochs", "1", "--out", str(run), *SYNTHETIC_ARGS)
    assert code == 0, err
    card = read_model_card(run / "model.pt")
    assert card.model == user_module and card.options == {"hidden": 12}
    code, out, err = cli_main(capsys, "eval", str(run))
    assert code == 0 and user_module in out, err
    for teacher in (str(run), f"{run / 'model.pt'}:{user_module}"):  # a run directory, and PATH:pkg.mod:fn
        code, out, err = cli_main(capsys, "train", "--method", "kd", "--teacher", teacher, "--epochs", "1",
                                  "--out", str(tmp_path / f"kd{len(teacher)}"), *SYNTHETIC_ARGS)
        assert code == 0, err
        metrics = json.loads((tmp_path / f"kd{len(teacher)}" / "metrics.json").read_text())
        assert metrics["teachers"][0]["model"] == user_module


def test_a_user_model_is_tapped_by_path_as_student_and_teacher(tmp_path, user_module):
    train(small_config(model={"name": user_module}), tmp_path / "t")
    sp = {"name": "sp", "student_layer": "body", "teacher_layer": "body"}
    trainer = Trainer(small_config(method=sp, model={"name": user_module, "options": {"hidden": 9}},
                                   teachers=[str(tmp_path / "t")]))
    assert trainer.method.taps == ("body",) and trainer.teachers[0].taps is not None
    idx = torch.arange(16)
    batch = trainer.method.extend(Batch.new(trainer.data.train_images[idx], trainer.data.train_labels[idx], idx))
    batch.inputs = trainer._inputs(batch, torch.Generator().manual_seed(0))
    teacher = trainer.teachers[0](batch.inputs)
    student = trainer.nets[0](batch.inputs, batch.forward_splits())
    assert student.features["body"].shape == (16, 9) and teacher.features["body"].shape == (16, 16)
    assert trainer.method.losses(Outputs(student.logits, student.features, {"teacher": teacher}), batch)


@pytest.mark.parametrize("spec, words", [("nosuchmodule_xyz:fn", "cannot import module 'nosuchmodule_xyz'"),
                                         ("{}:godo", "did you mean 'good'"),
                                         ("{}:VALUE", "not a callable")])
def test_a_factory_that_cannot_be_used_is_one_line_before_anything_is_written(spec, words, user_nets, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    code, _, err = cli_main(capsys, "train", "--model", spec.format(user_nets), "--out", str(out), *SYNTHETIC_ARGS)
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_a_teacher_entry_splits_at_the_colon_before_its_architecture(user_module):
    assert parse_teacher(f"runs/x/model.pt:{user_module}", "t") == TeacherSpec("runs/x/model.pt", user_module)
    assert parse_teacher("w.pt:cnn", "t") == TeacherSpec("w.pt", "cnn")
    assert parse_teacher("a:b/w.pt:mlp", "t") == TeacherSpec("a:b/w.pt", "mlp")
    spec = parse_teacher({"path": "w.pt", "model": "mlp", "options": {"hidden": [7]}}, "t")
    assert spec.options == {"hidden": [7], "dropout": 0.0, "input_dropout": 0.0}
    with pytest.raises(UserError, match=r"t\.options\.hiden"):
        parse_teacher({"path": "w.pt", "model": "mlp", "options": {"hiden": [7]}}, "t")


def test_hinton_s_mnist_setting_is_expressible():
    teacher = resolve([{"model": {"name": "mlp", "options": {"hidden": [1200, 1200], "dropout": 0.5,
                                                               "input_dropout": 0.2}},
                        "data": {"dataset": "mnist", "augment": {"crop_padding": 2, "flip": False}}}])
    net = build_model(teacher.model.name, 10, 1, 28, teacher.model.options)
    linear = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert linear == [(784, 1200), (1200, 1200), (1200, 10)]
    assert teacher.data.augment.crop_padding == 2
    student = resolve([{"model": {"name": "mlp", "options": {"hidden": [800, 800]}},
                        "method": {"name": "kd", "temperature": 20}, "teachers": ["t.pt:mlp"]}])
    assert student.method["temperature"] == 20.0
