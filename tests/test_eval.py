"""The model card beside model.pt and ``selfdistill eval``'s backend (evaluate_saved_model)."""

import csv
import dataclasses
import json
import shutil

import pytest
import torch

from conftest import SMALL_SYNTHETIC, cli_main, small_config
from selfdistill.analysis.eval_output import format_eval
from selfdistill.analysis.evaluation import evaluate_saved_model
from selfdistill.data import load_dataset
from selfdistill.engine import resolve, train
from selfdistill.errors import UserError
from selfdistill.models import build_model
from selfdistill.models.card import ModelCard, card_path, read_model_card, weights_sha256, write_model_card

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
                       "train": {"epochs": 1, "progress": False, "threads": 1, "device": "cpu"}}])  # as eval below
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
    user_error("is a directory, not a regular file", read_model_card, run / "model.pt")


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
    assert [r["name"] for r in rows] == result["class_names"] and rows[9]["name"] == "Ankle boot"
    correct = sum(float(r["accuracy"]) * int(r["count"]) / 100 for r in rows)
    assert correct == pytest.approx(result["top1"] * 20, abs=0.01)
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(result["reliability"]["count"]) == 2000

    text = format_eval(result)
    for part in ("top-1", "top-5", "NLL", "ECE", "2,000", " 0 T-shirt/top: ", " 9 Ankle boot: ", str(out)):
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


# ----------------------------------------------------------------------------- eval --teacher
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two finished MLPs on the same small synthetic data (it does not depend on the seed): a teacher
    (seed 0) and another model (seed 1), one epoch each."""
    root = tmp_path_factory.mktemp("pair")
    for name, seed in (("teacher", 0), ("model", 1)):
        train(small_config(train={"epochs": 1, "progress": False, "threads": 1, "seed": seed}), root / name)
    return root / "teacher", root / "model"


def direct_logits(weights, mean=None, std=None):
    """The logits of saved weights on the small synthetic test set, normalised by hand (the card's
    statistics unless others are given)."""
    card = read_model_card(weights) if card_path(weights).exists() else None
    mean = torch.tensor(mean if mean is not None else card.mean).view(1, -1, 1, 1)
    std = torch.tensor(std if std is not None else card.std).view(1, -1, 1, 1)
    net = build_model("mlp", 10, 1, 12)
    net.load_state_dict(torch.load(weights, weights_only=True))
    data = load_dataset(resolve([{"data": SMALL_SYNTHETIC}]).data)
    with torch.no_grad():
        return net.double().eval()((data.test_images.double() / 255 - mean) / std), data.test_labels


def fidelity_by_hand(student, teacher_probs):
    agreement = 100.0 * (student.argmax(1) == teacher_probs.argmax(1)).double().mean().item()
    kl = (teacher_probs * (teacher_probs.log() - student.log_softmax(1))).sum(1).mean().item()
    return agreement, kl


def test_a_model_is_its_own_perfect_teacher(pair, tmp_path):
    teacher, _ = pair
    result = evaluate_saved_model(teacher, teachers=[str(teacher)], device="cpu", out=tmp_path / "self")
    assert result["agreement"] == 100.0
    assert abs(result["teacher_kl"]) < 1e-6
    assert result["teacher_top1"] == result["top1"]
    assert result["teacher_nll"] == pytest.approx(result["nll"], rel=1e-5)
    assert result["teacher_ece"] == pytest.approx(result["ece"], rel=1e-4)


def test_fidelity_and_the_teachers_own_figures_match_a_direct_computation(pair, tmp_path):
    teacher, model = pair
    result = evaluate_saved_model(model, teachers=[str(teacher)], device="cpu", batch_size=24, out=tmp_path / "e")
    student, labels = direct_logits(model / "model.pt")
    t_logits, _ = direct_logits(teacher / "model.pt")
    p = t_logits.softmax(1)
    agreement, kl = fidelity_by_hand(student, p)
    assert 0 < agreement < 100 and kl > 0.001  # two different networks
    assert result["agreement"] == pytest.approx(agreement, abs=1e-9)
    assert result["teacher_kl"] == pytest.approx(kl, rel=1e-4)
    assert result["teacher_top1"] == pytest.approx(100.0 * (p.argmax(1) == labels).double().mean().item(), abs=1e-9)
    assert result["teacher_entropy"] == pytest.approx(-(p * p.log()).sum(1).mean().item(), rel=1e-4)
    q = p.scatter(1, labels[:, None], 0.0)
    q = q / q.sum(1, keepdim=True)
    nontarget = -(q * q.clamp_min(1e-300).log()).sum(1).mean().item()
    assert result["teacher_nontarget_entropy"] == pytest.approx(nontarget, rel=1e-4)
    assert result["teachers"][0]["model"] == "mlp"
    assert result["teachers"][0]["sha256"] == weights_sha256(teacher / "model.pt")
    assert "teachers_top1" not in result
    assert json.loads((tmp_path / "e" / "eval.json").read_text()) == json.loads(json.dumps(result))
    text = format_eval(result)
    assert "fidelity to the teacher mlp" in text and f"{result['agreement']:6.2f} %" in text
    assert f"{result['teacher_top1']:6.2f} %" in text and "non-target" in text


def test_the_teachers_own_figures_are_those_of_evaluating_it_alone(pair, tmp_path):
    teacher, model = pair
    alone = evaluate_saved_model(teacher, device="cpu", out=tmp_path / "alone")
    result = evaluate_saved_model(model, teachers=[str(teacher)], device="cpu", out=tmp_path / "with")
    assert result["teacher_top1"] == alone["top1"]
    assert result["teacher_nll"] == pytest.approx(alone["nll"], rel=1e-5)
    assert result["teacher_ece"] == pytest.approx(alone["ece"], rel=1e-4)
    # and the model's own figures do not change with a teacher beside it
    plain = evaluate_saved_model(model, device="cpu", out=tmp_path / "plain")
    assert {k: result[k] for k in plain if k != "out"} == {k: v for k, v in plain.items() if k != "out"}
    assert "teachers" not in plain and "agreement" not in format_eval(plain)


def test_an_ensemble_is_the_mean_of_probabilities(pair, tmp_path):
    teacher, model = pair
    result = evaluate_saved_model(model, teachers=[str(teacher), str(model)], device="cpu", out=tmp_path / "e")
    student, labels = direct_logits(model / "model.pt")
    t_logits, _ = direct_logits(teacher / "model.pt")
    p = (t_logits.softmax(1) + student.softmax(1)) / 2
    agreement, kl = fidelity_by_hand(student, p)
    assert result["agreement"] == pytest.approx(agreement, abs=1e-9)
    assert result["teacher_kl"] == pytest.approx(kl, rel=1e-4)
    assert result["teacher_top1"] == pytest.approx(100.0 * (p.argmax(1) == labels).double().mean().item(), abs=1e-9)
    assert result["teachers_top1"] == [evaluate_saved_model(r, device="cpu", out=tmp_path / r.name)["top1"]
                                       for r in (teacher, model)]
    assert "ensemble of 2 teachers" in format_eval(result)


def test_a_weights_file_with_its_architecture_and_a_teacher_of_other_statistics(pair, tmp_path):
    teacher, model = pair
    bare = tmp_path / "bare.pt"  # no card beside it: the architecture comes from PATH:ARCH
    shutil.copy(teacher / "model.pt", bare)
    result = evaluate_saved_model(model, teachers=[f"{bare}:mlp"], device="cpu", out=tmp_path / "bare")
    with_card = evaluate_saved_model(model, teachers=[str(teacher)], device="cpu", out=tmp_path / "card")
    assert result["agreement"] == with_card["agreement"] and result["teacher_kl"] == with_card["teacher_kl"]
    assert result["teachers"][0]["model"] == "mlp" and result["teachers"][0]["weights"] == str(bare)

    # a teacher whose card records other statistics sees the same images, normalised its own way
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    shutil.copy(teacher / "model.pt", other)
    card = read_model_card(teacher / "model.pt")
    write_model_card(other, dataclasses.replace(card, mean=[0.3], std=[0.2]))
    result = evaluate_saved_model(model, teachers=[str(other)], device="cpu", out=tmp_path / "other-out")
    student, _ = direct_logits(model / "model.pt")
    t_logits, _ = direct_logits(other, mean=[0.3], std=[0.2])
    agreement, kl = fidelity_by_hand(student, t_logits.softmax(1))
    assert result["agreement"] == pytest.approx(agreement, abs=1e-9)
    assert result["teacher_kl"] == pytest.approx(kl, rel=1e-4)


def test_teachers_that_do_not_fit_the_data_or_are_not_weights(pair, tmp_path):
    _, model = pair
    five, rgb, junk = tmp_path / "five.pt", tmp_path / "rgb.pt", tmp_path / "junk.pt"
    torch.save(build_model("mlp", 5, 1, 12).state_dict(), five)
    torch.save(build_model("cnn", 10, 3, 12).state_dict(), rgb)
    junk.write_bytes((model / "model.pt").read_bytes()[:300])  # a truncated file
    for teacher, match in ((f"{five}:mlp", r"--teacher: .*five.pt \(mlp\) predicts 5 classes, the data has 10"),
                           (f"{rgb}:cnn", r"--teacher: .*rgb.pt \(cnn\) takes 3-channel images, the data has 1"),
                           (f"{junk}:mlp", "--teacher: .*junk.pt is not a readable checkpoint"),
                           (str(tmp_path / "nothing"), "--teacher: .*nothing does not exist"),
                           (f"{five}:mpl", "--teacher: unknown architecture 'mpl'"),
                           (str(five), "nothing says which architecture")):
        user_error(match, evaluate_saved_model, model, teachers=[teacher], device="cpu", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_eval_with_a_teacher(pair, tmp_path, capsys):
    teacher, model = pair
    code, out, err = cli_main(capsys, "eval", str(model), "--teacher", str(teacher), "--device", "cpu",
                              "--out", str(tmp_path / "e"))
    assert code == 0 and err == [] and "agreement" in out
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["teachers"][0]["path"] == str(teacher)
    five = tmp_path / "five.pt"
    torch.save(build_model("mlp", 5, 1, 12).state_dict(), five)
    code, _, err = cli_main(capsys, "eval", str(model), "--teacher", f"{five}:mlp", "--device", "cpu")
    assert code == 2 and len(err) == 1 and "predicts 5 classes" in err[0]
