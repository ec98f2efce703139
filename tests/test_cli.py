"""The command line: listings, help, hints, one-line errors, what a run says while it trains, TensorBoard,
eval and report end to end. Most commands run in this process (fast); a few run as real processes to
check exit codes, stderr and Ctrl-C as a shell sees them."""

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import cli_main, run_cli, small_config
from selfdistill import cli, models
from selfdistill.commands import listings
from selfdistill.commands.recipes import bundled_recipes
from selfdistill.engine import tensorboard, train
from selfdistill.methods import METHODS, Method
from selfdistill.methods.dml import DML, DMLOptions

TINY = ["--set", "data.train_subset=1000", "--set", "data.eval_batch_size=500"]
SYNTH = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size", "16",
         "--set", "data.synthetic={train_size: 64, test_size: 32, size: 8}"]


def test_methods_lists_one_line_each(capsys):
    code, out, _ = cli_main(capsys, "methods")
    lines = out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert code == 0 and names == ["ce", "dlb", "drg", "dsr", "tf_nkd", "zipf_ls", "bake", "ls", "cs_kd", "ps_kd",
                                   "tf_kd_self", "tf_kd_reg", "byot", "kd", "dkd", "dist", "nkd", "sp", "crd",
                                   "mix_kd", "ca_mkd", "dml", "switokd", "sokd", "bd_kd", "lightskd"]
    assert all(len(line.split()) > 3 for line in lines)


def test_methods_say_whether_they_need_a_teacher_or_train_several_networks(capsys):
    code, out, _ = cli_main(capsys, "methods")
    needs = {line.split()[0]: line.split("  ")[1:] for line in out.splitlines()}
    needs = {name: next(part.strip() for part in parts if part) for name, parts in needs.items()}
    assert code == 0 and {name: needs[name] for name in ("dlb", "lightskd", "dkd", "kd", "ca_mkd", "dml", "switokd",
                                                         "sokd")} == {
        "dlb": "teacher-free", "lightskd": "teacher-free", "dkd": "needs a teacher", "kd": "needs 1+ teachers",
        "ca_mkd": "needs 2+ teachers", "dml": "trains 2+ networks (online)", "switokd": "trains 2 networks (online)",
        "sokd": "needs a teacher; trains 2 networks (online)"}
    for name, cls in METHODS.items():  # the declarations say what the classes do
        online = cls.networks is not Method.networks
        assert (cls.networks_added != (0, 0)) == online == needs[name].endswith("(online)"), name
        assert (cls.teachers_needed != (0, 0)) == needs[name].startswith("needs "), name
    cohort = DML(DMLOptions(peers=["mlp", "cnn", "mlp"])).networks(SimpleNamespace(model_name="mlp"))
    assert len(cohort) == 3 and DML.networks_added == (1, None)


def test_models_lists_each_architecture_once_with_its_aliases_origin_and_options(capsys, monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("tiny", lambda num_classes, in_channels, image_size, width=2: None)
    code, out, _ = cli_main(capsys, "models")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and list(lines) == [name for name in models.MODELS if name not in models.ALIASES]
    assert set(lines) - {"tiny"} == set(models.NOTES)  # every architecture of ours says what it is
    columns = {name: re.split(" {2,}", line, maxsplit=1) for name, line in lines.items()}
    assert columns["wrn16_2"][0] == "wrn16_2 = wrn_16_2" and columns["wrn16_2"][1].startswith("Wide ResNet WRN-16-2 ")
    assert columns["MobileNetV2"][0] == "MobileNetV2 = mobilenetv2_x0_5" and columns["vgg16"][0] == "vgg16"
    assert "DLB's VGG-16" in lines["vgg16"] and "RepDistiller's vgg16 (not DLB's vgg16)" in lines["vgg16_bn"]
    assert lines["mlp"].endswith(" | options: hidden=[512, 256], dropout=0.0, input_dropout=0.0")
    assert lines["resnet8x4"].endswith(" | options: width=4") and lines["vgg16"].endswith(" | no options")
    assert columns["tiny"][1] == "registered with register_model | options: its keyword arguments"


def test_recipes_lists_every_bundled_recipe_with_what_it_reproduces(capsys):
    code, out, _ = cli_main(capsys, "recipes")
    recipes = bundled_recipes()
    assert code == 0 and len(recipes) >= 6
    for recipe in recipes:
        assert recipe.description and recipe.reproduces, recipe.name
        line = next(line for line in out.splitlines() if line.startswith(f"{recipe.name} "))
        assert line.endswith(f"  {recipe.description}") and f"reproduces: {recipe.reproduces}" in out


def subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", ["train", "demo", "eval", "report"])
def test_every_flag_has_help_with_its_default(command):
    for action in subcommands()[command]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, f"{command} {action.option_strings[0]}"


def test_help_names_only_recipes_that_exist(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    names = {r.name for r in bundled_recipes()}
    assert "dlb_cifar100" in text and "dlb_cifar100_resnet32" not in text
    assert all(word.strip(",).") in names for word in text.split() if word.startswith("dlb_"))
    assert "(default: 10)" in text and "(default: 0.05; schedule cosine" in text


@pytest.mark.parametrize("args, expected", [
    (["train", "--epochs", "three"], "argument --epochs: invalid int value: 'three' (see `selfdistill train --help`)"),
    (["trian"], "did you mean 'train'?"),
    (["train", "--set", "method.alpha", "0.5"], "--set takes KEY=VALUE as one word: --set method.alpha=0.5"),
    (["train", "--epoch-count", "3"], "did you mean '--epochs'?"),
    (["train", "--method", "dlb", "--set", "schedule.name=cosin"], "(did you mean 'cosine'?)"),
    (["train", "--dataset", "fashionmnist"], "(did you mean 'fashion-mnist'?)"),
    (["train", "--config", "dlb_cifar1000"], "(did you mean 'dlb_cifar100'?)"),
])
def test_usage_errors_are_one_line_with_a_hint(capsys, args, expected):
    code, out, err = cli_main(capsys, *args)
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith("selfdistill: error: ") and err[0].count("selfdistill: error") == 1
    assert expected in err[0]


def test_a_real_process_exits_2_with_one_line(tmp_path):
    result = run_cli("train", "--method", "nope", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "method.name='nope' is not allowed" in result.stderr and not (tmp_path / "run").exists()


def test_missing_dataset_is_one_line_with_exit_code_2(tmp_path, capsys):
    code, _, err = cli_main(capsys, "train", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                            "--set", "data.download=false", "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1 and "cifar-10-batches-py" in err[0]


@pytest.mark.parametrize("delay", [0.5, 1.2])
def test_ctrl_c_while_starting_is_one_line(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-m", "selfdistill", "train", "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # while Python and torch load (on a fast machine perhaps in the first epoch: the same rule)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # -2: killed by SIGINT, which a shell reports as 130 too. CPython ends itself with SIGINT when it judges a
    # KeyboardInterrupt unhandled, which now and then happens although main() caught it and returned 130 (seen
    # about one run in ten under pytest's load, before and after the online-distillation work alike).
    assert proc.returncode in (130, -signal.SIGINT), err
    assert err.count("\n") == 1 and err.startswith("selfdistill: interrupted"), err
    assert "nothing was written" in err or "nothing was kept" in err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_in_other_commands_says_only_that(capsys, monkeypatch):
    def interrupted(args, argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(listings, "run", interrupted)
    code, _, err = cli_main(capsys, "models")
    assert code == 130 and err == ["selfdistill: interrupted"]


def full_pipe() -> tuple[int, int]:
    """A pipe holding all it can, in lines: a command that writes into it waits until its reader goes."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"\n" * 4096)
    os.set_blocking(write, True)
    return read, write


@pytest.mark.parametrize("args", [["recipes"], ["models"], ["methods"], ["report"], ["train", "--help"]])
def test_a_reader_that_stops_after_one_line_ends_the_command_quietly(tmp_path, args):
    """As ``selfdistill COMMAND | head -1``: the reader takes a line and goes while the command is still writing.
    The pipe is full before the command starts, so that the command is surely still writing when its reader goes:
    into an empty pipe, a short listing could be written whole before, and never meet the closed pipe."""
    if args == ["report"]:
        train(small_config(train={"epochs": 1, "progress": False, "threads": 1}), tmp_path / "run")
        args = ["report", str(tmp_path), "--no-plots"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # so a short output is written at the end
    read, write = full_pipe()
    proc = subprocess.Popen([sys.executable, "-m", "selfdistill", *args], stdout=write, stderr=subprocess.PIPE,
                            text=True, env=env)
    os.close(write)
    assert os.read(read, 1) == b"\n"  # one line
    os.close(read)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (cli.PIPE_CLOSED, "") and cli.PIPE_CLOSED == 141


def test_train_on_real_bundled_images_then_refuse_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = cli_main(capsys, "train", "--method", "dlb", "--epochs", "1", "--seed", "3", "--out", str(out),
                               *TINY)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["method"] == "dlb" and metrics["test_top1"] > 15  # chance: 10%
    assert stdout.startswith(f"selfdistill: training into {out} | dlb on fashion-mnist-mini with cnn (94,186 "
                             "parameters) | 1,000 train / 2,000 test images | 16 steps/epoch x 1 epochs | "
                             + ("cuda:0" if torch.cuda.is_available() else "cpu"))  # device auto
    assert f"done: test top-1 {metrics['test_top1']:.2f}%" in stdout
    before = (out / "metrics.json").read_bytes()
    code, _, err = cli_main(capsys, "train", "--method", "dlb", "--epochs", "1", "--out", str(out), *TINY)
    assert code == 2 and "finished run" in err[0] and (out / "metrics.json").read_bytes() == before


def test_the_start_line_names_every_network_an_online_method_trains(tmp_path, capsys):
    code, out, _ = cli_main(capsys, "train", *SYNTH, "--epochs", "1", "--method", "dml", "--out", str(tmp_path / "r"),
                            "--set", "method.peers=[mlp,cnn]", "--set", "model.options.hidden=[16]")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    networks = metrics["networks"]
    size = {"student": f"{metrics['parameters']:,}", **{role: f"{networks[role]['parameters']:,}"
                                                         for role in ("peer1", "peer2")}}
    assert code == 0 and networks["peer1"]["model"] == "mlp" and networks["peer2"]["model"] == "cnn"
    assert len(set(size.values())) == 2  # the peer like the student takes its options; the CNN is another size
    assert f"| dml on synthetic with student mlp ({size['student']} parameters) + peer1 mlp ({size['peer1']} " \
           f"parameters) + peer2 cnn ({size['peer2']} parameters) | 64 train / 32 test images | " in out.splitlines()[0]


def test_print_config_applies_config_file_flags_and_sets_in_order(capsys):
    code, out, _ = cli_main(capsys, "train", "--config", "dlb_cifar100", "--epochs", "5", "--set", "method.alpha=0.5",
                            "--print-config")
    assert code == 0
    assert "alpha: 0.5" in out and "epochs: 5" in out and "milestones:" in out


def test_default_schedule_decays(capsys):
    code, out, _ = cli_main(capsys, "train", "--print-config")
    assert code == 0 and "name: cosine" in out


def test_off_a_terminal_a_run_prints_status_lines_and_validation_is_labelled_val(tmp_path, capsys):
    code, out, _ = cli_main(capsys, "train", *SYNTH, "--out", str(tmp_path / "run"), "--set", "train.progress=false",
                            "--set", "train.status_every=1e-9", "--set", "data.validation_split=20")
    assert code == 0
    assert "44 train / 20 val images" in out.splitlines()[0]
    assert "epoch 1/2 step 1/3 | loss" in out and "of training left" in out
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch 2/2 | lr"))
    assert " | val " in epoch_line and "test" not in epoch_line and out.splitlines()[-1].startswith("done: val top-1")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_split"] == "val" and "val_top1" in metrics and "test_top1" not in metrics
    assert "best_epoch_selected_on_val" in metrics
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert "val_top1,val_nll,val_ece" in header and "test" not in header


def test_tensorboard_events_hold_every_epoch(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cli_main(capsys, "train", *SYNTH, "--out", str(tmp_path / "run"))[0] == 0
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert [e.step for e in events.Scalars("test/top1")] == [1, 2]
    tags = set(events.Tags()["scalars"])
    assert {"lr", "loss/ce", "train/top1", "test/nll", "test/ece", "speed/images_per_s"} <= tags


def test_tensorboard_holds_the_students_fidelity_to_its_teacher_and_the_teachers_figures(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cli_main(capsys, "train", *SYNTH, "--epochs", "1", "--out", str(tmp_path / "teacher"))[0] == 0
    assert cli_main(capsys, "train", *SYNTH, "--method", "kd", "--teacher", str(tmp_path / "teacher"), "--out",
                    str(tmp_path / "kd"))[0] == 0
    events = EventAccumulator(str(tmp_path / "kd"))
    events.Reload()
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    figures = ("top1", "nll", "ece", "nontarget_entropy")
    for tag, key in [("fidelity/test/agreement", "test_agreement"), ("fidelity/test/teacher_kl", "test_teacher_kl"),
                     *((f"teacher/test/{m}", f"teacher_test_{m}") for m in figures)]:
        points = events.Scalars(tag)
        assert [p.step for p in points] == [1, 2] and points[-1].value == pytest.approx(metrics[key], rel=1e-6)
    teacher = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert [p.value for p in events.Scalars("teacher/test/top1")] == pytest.approx([teacher["test_top1"]] * 2)


def test_tensorboard_true_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    code, _, err = cli_main(capsys, "train", *SYNTH, "--out", str(tmp_path / "run"), "--set", "train.tensorboard=true")
    assert code == 2 and len(err) == 1 and "pip install 'selfdistill[tensorboard]'" in err[0]
    assert not (tmp_path / "run").exists()


def test_module_entry_point_and_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("selfdistill ")


def test_eval_and_report_end_to_end(tmp_path, capsys):
    for seed in (0, 1):
        assert cli_main(capsys, "train", *SYNTH, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}"))[0] == 0
    code, out, _ = cli_main(capsys, "eval", str(tmp_path / "s0"))
    assert code == 0 and "top-5" in out and "per-class" in out
    saved = json.loads((tmp_path / "s0" / "eval-synthetic-test" / "eval.json").read_text())
    metrics = json.loads((tmp_path / "s0" / "metrics.json").read_text())
    assert saved["top1"] == pytest.approx(metrics["test_top1"]) and saved["images"] == 32
    code, out, _ = cli_main(capsys, "report", str(tmp_path))
    row = next(line for line in out.splitlines() if line.startswith("| synthetic"))
    assert code == 0 and "| ce |" in row and "| 2 |" in row and "±" in row
    for name in ("report.md", "accuracy.png", "reliability.png"):
        assert (tmp_path / "report" / name).is_file()
    assert cli_main(capsys, "report", str(tmp_path / "nothing"))[0] == 2


def test_demo_threads_are_checked_like_train(capsys):
    code, _, err = cli_main(capsys, "demo", "--threads", "0")
    assert code == 2 and len(err) == 1 and "train.threads" in err[0]
