"""What a run checks and says of its teachers before training (engine/teacher_checks.py): each teacher's own
top-1 right after the start line, a warning for one at chance level, a refusal of one trained on another
dataset; and a teacher file's values (models/teachers.py), which load exactly or are refused in one line."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli_main, small_config
from selfdistill.data import same_images
from selfdistill.engine.resume import check_resume
from selfdistill.engine.teacher_checks import at_chance
from selfdistill.errors import UserError
from selfdistill.models import build_model
from selfdistill.models.teachers import TeacherSpec, load_teacher
from test_teachers import SHAPE, TINY, _published_checkpoint, cnn_teacher, mlp_teacher  # noqa: F401 (fixtures)


def own_top1(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["test_top1"]


# ----------------------------------------------------------------------------- top-1 on screen, chance warning
def test_each_teacher_s_own_top1_follows_the_start_line(mlp_teacher, cnn_teacher, tmp_path, capsys):  # noqa: F811
    zeros = {k: torch.zeros_like(v) for k, v in build_model("mlp", 10, 1, 12).state_dict().items()}
    blank = tmp_path / "zeros.pt"  # one class for every image: chance, whatever the data
    torch.save(zeros, blank)
    teachers = [("teacher1", "mlp", str(mlp_teacher)), ("teacher2", "cnn", str(cnn_teacher)),
                ("teacher3", "mlp", str(blank))]
    args = ["--teacher", str(mlp_teacher), "--teacher", str(cnn_teacher), "--teacher", f"{blank}:mlp"]
    code, out, err = cli_main(capsys, "train", *TINY, "--method", "kd", *args, "--out", str(tmp_path / "run"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("selfdistill: training into") and lines[2].startswith("epoch 1/1")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scores = metrics["teachers_test_top1"]  # measured once: the same figures as the run's metrics
    assert scores[:2] == [own_top1(mlp_teacher), own_top1(cnn_teacher)]  # and as each teacher's own run
    assert lines[1] == " | ".join(f"{role} {model} ({path}): test top-1 {score:.2f}%"
                                  for (role, model, path), score in zip(teachers, scores))
    at = [at_chance(score, 10, 64) for score in scores]
    assert at[0] is False and at[2] is True  # a trained mlp (45 %) and a constant one
    assert err == [f"selfdistill: warning: {role} {model} ({path}) scores {score:.2f}% test top-1, no better than "
                   f"chance (10.00% for 10 classes, on 64 images): it has nothing to teach; check that it is the "
                   "trained teacher for this data" for (role, model, path), score, chance in zip(teachers, scores, at)
                   if chance]


def test_a_random_published_checkpoint_shows_its_top1_and_is_warned_of(tmp_path, capsys):
    path = tmp_path / "ckpt_epoch_240.pth"  # RepDistiller's layout, random values: no card, no dataset to check
    _published_checkpoint(path, "resnet8x4")
    data = ["--dataset", "synthetic", "--set", "data.synthetic={channels: 3, size: 32, num_classes: 100, "
            "train_size: 8, test_size: 100}", "--batch-size", "8", "--epochs", "1", "--threads", "1"]
    code, out, err = cli_main(capsys, "train", "--method", "kd", "--model", "resnet8", "--teacher",
                              f"{path}:resnet8x4", *data, "--out", str(tmp_path / "kd"))
    assert code == 0, err
    score = json.loads((tmp_path / "kd" / "metrics.json").read_text())["teacher_test_top1"]
    assert f"teacher resnet8x4 ({path}): test top-1 {score:.2f}%" == out.splitlines()[1]
    assert len(err) == 1 and err[0].startswith(f"selfdistill: warning: teacher resnet8x4 ({path}) scores ")
    assert "no better than chance (1.00% for 100 classes, on 100 images)" in err[0]


@pytest.mark.parametrize("top1, classes, images, expected", [
    (1.2, 100, 10_000, True),  # the random RepDistiller checkpoint of the report, on CIFAR-100's test set
    (10.0, 10, 10_000, True),  # a Fashion-MNIST teacher on other images of its shape
    (0.0, 10, 10_000, True),
    (1.4, 100, 10_000, False),  # 4 standard deviations above chance
    (79.42, 100, 10_000, False),
    (45.3, 10, 64, False),
    (21.0, 10, 64, True),  # 64 images cannot tell 21 % from chance (3 sigma: 21.25 %)
])
def test_chance_level_is_one_over_the_classes_within_three_standard_deviations(top1, classes, images, expected):
    assert at_chance(top1, classes, images) is expected


# ----------------------------------------------------------------------------- the dataset a teacher knows
def retagged(teacher: Path, folder: Path, dataset: str) -> Path:
    """A copy of the run ``teacher`` whose model card says it was trained on ``dataset``."""
    shutil.copytree(teacher, folder)
    card = json.loads((folder / "model.json").read_text())
    card["dataset"] = dataset
    (folder / "model.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("dataset", ["fashion-mnist", "fashion-mnist-mini", "mnist"])
def test_a_teacher_trained_on_another_dataset_is_refused_unless_told(mlp_teacher, tmp_path, capsys,  # noqa: F811
                                                                     dataset):
    teacher = retagged(mlp_teacher, tmp_path / "teacher", dataset)
    args = ["train", *TINY, "--method", "kd", "--teacher", str(teacher), "--out", str(tmp_path / "run")]
    code, out, err = cli_main(capsys, *args)
    assert code == 2 and len(err) == 1 and out == "", err
    assert err[0] == (f"selfdistill: error: teachers[0]: {teacher / 'model.pt'} was trained on {dataset} (as recorded "
                      "with it), the student's data is synthetic: its predictions on these images would teach "
                      "nothing; give a teacher trained on synthetic, or set data.teacher_dataset_check=false if "
                      "this is meant")
    assert not (tmp_path / "run").exists()
    code, out, err = cli_main(capsys, *args, "--set", "data.teacher_dataset_check=false")
    assert code == 0 and f"teacher mlp ({teacher}): test top-1 {own_top1(mlp_teacher):.2f}%" in out, err


def test_an_unfinished_runs_checkpoint_says_its_dataset_too(mlp_teacher, tmp_path, capsys):  # noqa: F811
    checkpoint = tmp_path / "checkpoint.pt"
    state = torch.load(mlp_teacher / "checkpoint.pt", weights_only=True)
    state["config"]["data"]["dataset"] = "mnist"
    torch.save(state, checkpoint)
    code, _, err = cli_main(capsys, "train", *TINY, "--method", "kd", "--teacher", str(checkpoint),
                            "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1 and f"{checkpoint} was trained on mnist (as recorded with it)" in err[0], err


def test_the_bundled_slice_is_fashion_mnist_s_own_images():
    assert same_images("fashion-mnist-mini", "fashion-mnist") and same_images("fashion-mnist", "fashion-mnist-mini")
    assert same_images("synthetic", "synthetic") and same_images("unknown", "unknown")
    assert not same_images("fashion-mnist", "mnist") and not same_images("fashion-mnist-mini", "mnist")
    assert not same_images("cifar10", "cifar100")


def test_the_dataset_check_may_change_on_resume():
    saved, now = small_config(), small_config(data={"teacher_dataset_check": False})
    check_resume(saved, now, 1, False)  # no refusal: it changes nothing the run computes
    with pytest.raises(UserError, match="data.batch_size"):
        check_resume(saved, small_config(data={"batch_size": 8}), 1, False)


# ----------------------------------------------------------------------------- a teacher file's values
KINDS = st.sampled_from(["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool", "complex64",
                         "sparse", "meta"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["layer1.1.weight", "layer1.1.bias", "fc.weight"]), kind=KINDS,
       special=st.sampled_from([None, float("nan"), float("inf"), -float("inf")]))
def test_a_teacher_file_s_values_load_exactly_or_are_refused_in_one_line(tmp_path, key, kind, special):
    state = build_model("mlp", 10, 1, 12).state_dict()
    tensor = state[key].clone()
    if special is not None:
        tensor.view(-1)[7] = special
    if kind == "sparse":
        tensor = tensor.to_sparse()
    elif kind == "meta":
        tensor = tensor.to("meta")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # casting NaN or infinity to an integer type
            tensor = tensor.to(getattr(torch, kind))
    state[key] = tensor
    path = tmp_path / "w.pt"
    torch.save(state, path)
    try:
        loaded = load_teacher(TeacherSpec(str(path), "mlp"), SHAPE)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"teachers[0]: {path}: {key} ")
        assert kind in ("sparse", "meta", "complex64", "int64", "int32", "uint8", "bool") or special is not None
        return
    # loaded: the file's values, as real, finite floats of the model's own dtype
    assert kind in ("float32", "float16", "bfloat16", "float64") and special is None
    value = loaded.net.state_dict()[key]
    assert value.dtype == torch.float32 and torch.equal(value, tensor.float())


@pytest.mark.parametrize("protocol, expected", [
    (4, "w.pt is a plain Python pickle (pickle.dump), not a file written by torch.save; save the weights with "
        "torch.save(model.state_dict(), PATH)"),
    (0, "w.pt is not a readable checkpoint (UnpicklingError: Unsupported operand 100)"),
])
def test_a_raw_pickle_is_one_line_of_ours_without_torch_s_warning_or_text(tmp_path, protocol, expected):
    path = tmp_path / "w.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=protocol))
    with warnings.catch_warnings(record=True) as shown, pytest.raises(UserError) as refused:
        warnings.simplefilter("always")
        load_teacher(TeacherSpec(str(path), "mlp"), SHAPE)
    assert str(refused.value) == f"teachers[0]: {tmp_path / expected}"
    assert [str(w.message) for w in shown] == []  # torch warns of a pickle protocol above 2 as it reads
