"""The model card beside model.pt and ``selfdistill eval``'s backend (evaluate_saved_model)."""

import csv
import json
import shutil

import pytest
import torch

from selfdistill.config import resolve
from selfdistill.engine import train
from selfdistill.errors import UserError
from selfdistill.evaluation import evaluate_saved_model, format_eval
from selfdistill.modelcard import ModelCard, card_path, read_model_card, weights_sha256, write_model_card
from selfdistill.models import build_model

FASHION = {"mean": [0.286], "std": [0.353], "dataset": "fashion-mnist-mini"}


def card_for(model_path, **changes):
    fields = {"model": "mlp", "num_classes": 10, "in_channels": 1, "image_size": 28, "pad_to": None, **FASHION,
              "method": "ce", "weights_sha256": weights_sha256(model_path), **changes}
    return ModelCard(**fields)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished MLP run on 500 images of the bundled slice, with a model card as the engine will write it."""
    out = tmp_path_factory.mktemp("run") / "mlp"
    config = resolve([{"model": {"name": "mlp"}, "schedule": {"name": "constant"},
                       "data": {"dataset": "fashion-mnist-mini", "train_subset": 500, "eval_batch_size": 1000},
                       "train": {"epochs": 1, "progress": False, "threads": 1}}])
    metrics = train(config, out)
    write_model_card(out / "model.pt", card_for(out / "model.pt"))
    return out, metrics


def copy_run(trained, tmp_path, card=True):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained[0] / "model.pt", run / "model.pt")
    shutil.copy(trained[0] / "metrics.json", run / "metrics.json")  # the mark of a finished run
    if card:
        shutil.copy(trained[0] / "model.json", run / "model.json")
    return run


def user_error(match, call, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- the model card
def test_card_path_is_beside_the_weights(tmp_path):
    assert card_path(tmp_path / "runs" / "x" / "model.pt") == tmp_path / "runs" / "x" / "model.json"
    assert card_path(tmp_path / "foo.pt") == tmp_path / "foo.json"


def test_card_round_trips_with_format_and_version(trained):
    run, _ = trained
    raw = json.loads((run / "model.json").read_text())
    assert raw["format"] == "selfdistill-model" and raw["version"] == 1
    assert list(raw)[:3] == ["format", "version", "model"] and raw["pad_to"] is None
    assert read_model_card(run / "model.pt") == card_for(run / "model.pt")


@pytest.mark.parametrize("content, match", [
    (None, "no model card .*older versions lack it.*pass --model and --dataset"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[1, 2]", "JSON object is expected"),
    ({"format": "something-else"}, "not a selfdistill model card"),
    ({"version": 2}, "version 2 is newer .*upgrade selfdistill"),
    ({"version": "1"}, "not a card version"),
    ({"num_classes": "10"}, "num_classes='10' is not allowed; allowed: an integer >= 2"),
    ({"mean": [0.1, 0.2]}, "'mean' has 2 values for in_channels=1"),
    ({"pad_to": 0}, "pad_to=0 is not allowed"),
    ({"weights_sha256": "0" * 64}, "describes other weights.*does not match model.pt"),
    ("drop:std", "lacks 'std'"),
])
def test_bad_cards_are_one_line_errors_naming_the_card(trained, tmp_path, content, match):
    run = copy_run(trained, tmp_path, card=False)
    card = card_for(run / "model.pt").to_dict()
    if isinstance(content, dict):
        (run / "model.json").write_text(json.dumps({**card, **content}))
    elif isinstance(content, str):
        del card[content.split(":")[1]]
        (run / "model.json").write_text(json.dumps(card))
    elif content is not None:
        (run / "model.json").write_bytes(content)
    message = user_error(match, read_model_card, run / "model.pt")
    assert "model.json" in message


def test_a_directory_in_place_of_the_card_is_refused(trained, tmp_path):
    run = copy_run(trained, tmp_path, card=False)
    (run / "model.json").mkdir()
    user_error("is a directory, not a model card", read_model_card, run / "model.pt")


# ----------------------------------------------------------------------------- evaluation
def test_eval_of_a_run_reproduces_the_engines_test_figures_and_writes_its_files(trained):
    run, metrics = trained
    result = evaluate_saved_model(run, device="cpu")
    # the same weights, images and normalisation as the engine's final evaluation
    assert result["images"] == metrics["test_images"] == 2000
    assert result["top1"] == pytest.approx(metrics["test_top1"], abs=1e-9)
    assert result["nll"] == pytest.approx(metrics["test_nll"], rel=1e-5)
    assert result["ece"] == pytest.approx(metrics["test_ece"], rel=1e-4)
    assert result["top1"] <= result["top5"] <= 100 and result["top5_k"] == 5
    assert (result["model"], result["dataset"], result["split"]) == ("mlp", "fashion-mnist-mini", "test")
    assert result["weights_sha256"] == weights_sha256(run / "model.pt") and result["model_card"] is True

    out = run / "eval-fashion-mnist-mini-test"
    assert result["out"] == str(out)
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(result))
    rows = list(csv.DictReader((out / "per_class.csv").read_text().splitlines()))
    assert [int(r["class"]) for r in rows] == list(range(10)) and sum(int(r["count"]) for r in rows) == 2000
    correct = sum(float(r["accuracy"]) * int(r["count"]) / 100 for r in rows)
    assert correct == pytest.approx(result["top1"] * 20, abs=0.01)
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(result["reliability"]["count"]) == 2000

    text = format_eval(result)
    for part in ("top-1", "top-5", "NLL", "ECE", "2,000", " 9: ", str(out)):
        assert part in text


def test_eval_of_the_training_split_and_into_a_chosen_folder(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    result = evaluate_saved_model(run / "model.pt", split="train", batch_size=1000, out=tmp_path / "here",
                                  device="cpu")
    assert result["images"] == 6000  # the dataset's full training set, not the run's 500-image subset
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["eval.json", "per_class.csv", "reliability.png"]


def test_a_model_without_card_needs_model_and_dataset_and_then_uses_the_dataset_statistics(trained, tmp_path):
    run = copy_run(trained, tmp_path, card=False)
    user_error("no model card .*pass --model and --dataset", evaluate_saved_model, run, device="cpu")
    user_error("no model card", evaluate_saved_model, run, model="mlp", device="cpu")
    result = evaluate_saved_model(run, model="mlp", dataset="fashion-mnist-mini", device="cpu")
    assert result["model_card"] is False and result["mean"] == [0.286] and result["image_size"] == 28
    assert result["top1"] == pytest.approx(trained[1]["test_top1"], abs=1e-9)  # the same statistics


@pytest.mark.parametrize("layout, match", [
    ("missing", "no such file or directory"),
    ("unfinished", "holds no finished model: the run has not finished.*--resume"),
    ("being-extended", "holds no finished model: the run has not finished.*--resume"),
    ("empty", "is not a run directory"),
    ("other-file", "expected a run directory or a .pt file"),
])
def test_targets_that_are_not_finished_runs(tmp_path, layout, match):
    target = tmp_path / "target"
    if layout == "unfinished":
        target.mkdir()
        (target / "config.yaml").write_text("{}\n")
    elif layout == "being-extended":  # model.pt of an earlier end, metrics.json removed until the new one
        target.mkdir()
        (target / "model.pt").write_bytes(b"weights of an earlier end")
    elif layout == "empty":
        target.mkdir()
    elif layout == "other-file":
        target = tmp_path / "weights.txt"
        target.write_text("x")
    user_error(match, evaluate_saved_model, target, device="cpu")


@pytest.mark.parametrize("content, match", [
    (b"not a torch file", "cannot be loaded as model weights"),
    ([torch.zeros(2)], "is not a state_dict"),
    ({"model": {}, "optimizer": {}, "version": 1}, "is a training checkpoint, not model weights"),
])
def test_files_that_are_not_weights(tmp_path, content, match):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    user_error(match, evaluate_saved_model, path, model="mlp", dataset="fashion-mnist-mini", device="cpu")


def test_weights_of_another_architecture_name_the_first_key_that_disagrees(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    message = user_error("does not fit cnn .*lacks 'layer1.0.0.weight'", evaluate_saved_model, run, model="cnn",
                         device="cpu")
    assert str(run / "model.pt") in message
    small = tmp_path / "small.pt"
    torch.save(build_model("mlp", 10, 1, 12).state_dict(), small)  # another input size: another first layer
    user_error(r"'layer1.1.weight' has shape \(512, 144\) in the file and \(512, 784\)", evaluate_saved_model,
               small, model="mlp", dataset="fashion-mnist-mini", device="cpu")
    extra = tmp_path / "extra.pt"
    torch.save({**torch.load(run / "model.pt", weights_only=True), "head.weight": torch.zeros(1)}, extra)
    user_error("it has 'head.weight', which the model lacks", evaluate_saved_model, extra, model="mlp",
               dataset="fashion-mnist-mini", device="cpu")


@pytest.mark.parametrize("changes, match", [
    ({"num_classes": 5}, "predicts 5 classes .* fashion-mnist-mini has 10"),
    ({"in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}, "takes 3-channel images .* has 1 channels"),
    ({"image_size": 32}, "trained on 32x32 inputs .* gives 28x28"),
])
def test_a_card_that_does_not_fit_the_dataset(tmp_path, changes, match):
    path = tmp_path / "model.pt"
    torch.save(build_model("mlp", 10, 1, 28).state_dict(), path)
    write_model_card(path, card_for(path, **changes))
    user_error(match, evaluate_saved_model, path, device="cpu")


def test_images_the_model_cannot_take_are_a_one_line_error(tmp_path):
    # the CNN's weights do not depend on the input size, but two 2x2 max-pools cannot shrink 1x1 images
    path = tmp_path / "model.pt"
    torch.save(build_model("cnn", 10, 1, 1).state_dict(), path)
    write_model_card(path, card_for(path, model="cnn", image_size=1, dataset="synthetic"))
    user_error("cnn cannot take the 1x1 images of synthetic", evaluate_saved_model, path, device="cpu")


def test_bad_options_and_an_unwritable_out(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    user_error("--split='val' is not allowed; allowed: test, train", evaluate_saved_model, run, split="val")
    user_error("--batch-size=0", evaluate_saved_model, run, batch_size=0)
    user_error("--dataset='fashion-mnist-mni'.*did you mean", evaluate_saved_model, run, dataset="fashion-mnist-mni")
    user_error("--model='mpl'.*did you mean 'mlp'", evaluate_saved_model, run, model="mpl")
    user_error("--device='tpu'", evaluate_saved_model, run, device="tpu")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = user_error("cannot write the results there", evaluate_saved_model, run, out=blocker / "eval",
                         device="cpu")
    assert str(blocker / "eval") in message
