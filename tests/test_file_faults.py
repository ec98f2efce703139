"""Files that are not what they seem: output folders and event files planted as symlinks (nothing is written
through them), and inputs that are FIFOs, devices or far too large (refused with one line and exit 2, never
read until a hang or the OOM killer). The cases that would hang or fill memory in a regression run in a child
with a timeout and a memory limit (:func:`fault_runner.run_bounded`), so that they fail instead."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

import fault_runner
from conftest import cli_main, ctrl_c_in_epoch
from selfdistill.errors import UserError
from selfdistill.fileio import METADATA_LIMIT, read_small_file

RUN = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--batch-size", "16",
       "--set", "data.synthetic={train_size: 64, test_size: 32, size: 8}", "--set", "train.threads=1",
       "--set", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory) -> Path:
    """A finished DML run: the student (model.pt) and peer1 (peer1.pt), each with its card."""
    out = tmp_path_factory.mktemp("online") / "run"
    assert fault_runner.run(["train", *RUN, "--method", "dml", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(online_run, tmp_path) -> Path:
    """A copy of the finished run, to plant things in."""
    return Path(shutil.copytree(online_run, tmp_path / "run"))


def plant(path: Path, kind: str) -> None:
    """A FIFO at ``path``, or a symlink to the device ``kind``."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(kind)


def assert_refused(code: int, err: list[str], path: Path, why: str) -> None:
    assert code == 2 and len(err) == 1, err
    assert str(path) in err[0] and why in err[0], err


# ----------------------------------------------------------------------------- planted symlinks
@pytest.mark.parametrize("role, folder", [([], "eval-synthetic-test"), (["--role", "peer1"],
                                                                       "eval-peer1-synthetic-test")])
def test_eval_never_writes_through_a_symlinked_output_folder(run, tmp_path, capsys, role, folder):
    victim = tmp_path / "V"
    victim.mkdir()
    (run / folder).symlink_to(victim)
    code, _, err = cli_main(capsys, "eval", str(run), *role, "--device", "cpu")
    assert_refused(code, err, run / folder, "is a symbolic link")
    assert list(victim.iterdir()) == []


def test_report_never_writes_through_a_symlinked_output_folder(run, tmp_path, capsys):
    victim = tmp_path / "V"
    victim.mkdir()
    (run / "report").symlink_to(victim)
    code, _, err = cli_main(capsys, "report", str(run))
    assert_refused(code, err, run / "report", "is a symbolic link")
    assert list(victim.iterdir()) == []


def test_tensorboard_never_writes_through_a_link_planted_at_its_event_file_name(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import event_file_writer

    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("precious")
    with ctrl_c_in_epoch(1):
        code, _, _ = cli_main(capsys, "train", *RUN, "--epochs", "2", "--set", "train.tensorboard=true",
                              "--out", str(out))
    assert code == 130
    # the names TensorBoard alone would give the resumed run's file: second, host, process, writer number
    now, host, uid = int(time.time()), socket.gethostname(), event_file_writer._global_uid._value
    for second in range(now - 1, now + 600):
        for number in range(uid, uid + 3):
            (out / f"events.out.tfevents.{second:010d}.{host}.{os.getpid()}.{number}").symlink_to(victim)
    assert cli_main(capsys, "train", "--out", str(out), "--resume")[0] == 0
    assert victim.read_text() == "precious"
    written = [p for p in out.glob("events.out.tfevents.*") if not p.is_symlink()]
    assert len(written) == 2 and all(p.stat().st_size > 0 for p in written)  # the first attempt's and the resumed


# ----------------------------------------------------------------------------- inputs that are not regular files
def test_a_fifo_teacher_is_refused_and_leaves_no_lock(tmp_path):
    teacher, out = tmp_path / "t.pt", tmp_path / "student"
    os.mkfifo(teacher)
    code, err = fault_runner.run_bounded(["train", *RUN, "--method", "kd", "--teacher", f"{teacher}:mlp",
                                          "--out", str(out)])
    assert_refused(code, err, teacher, "is a FIFO (named pipe), not a regular file")
    assert not out.exists()  # no .lock left, nor the folder the run created


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_eval_refuses_a_model_card_that_is_not_a_regular_file(run, kind):
    card = run / "model.json"
    card.unlink()
    plant(card, kind)
    code, err = fault_runner.run_bounded(["eval", str(run), "--device", "cpu"])
    assert_refused(code, err, card, "FIFO (named pipe)" if kind == "fifo" else "character device")


def test_eval_refuses_a_fifo_weights_file(tmp_path):
    weights = tmp_path / "w.pt"
    os.mkfifo(weights)
    code, err = fault_runner.run_bounded(["eval", str(weights), "--model", "mlp", "--dataset", "synthetic",
                                          "--device", "cpu"])
    assert_refused(code, err, weights, "is a FIFO (named pipe), not a regular file")


@pytest.mark.parametrize("name, kind", [("metrics.json", "fifo"), ("log.csv", "/dev/zero"),
                                        ("config.yaml", "fifo")])
def test_report_refuses_run_files_that_are_not_regular_files(run, name, kind):
    path = run / name
    path.unlink()
    plant(path, kind)
    code, err = fault_runner.run_bounded(["report", str(run), "--no-plots"])
    assert_refused(code, err, run, f"{name} is a {'FIFO' if kind == 'fifo' else 'character device'}")
    assert not (run / "report").exists()


def test_a_fifo_config_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    os.mkfifo(config)
    code, err = fault_runner.run_bounded(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert_refused(code, err, config, "is a FIFO (named pipe), not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_metadata_file_larger_than_the_cap_is_refused(run, capsys):
    (run / "model.json").write_bytes(b" " * (METADATA_LIMIT + 1))
    code, _, err = cli_main(capsys, "eval", str(run), "--device", "cpu")
    assert_refused(code, err, run / "model.json", f"is larger than {METADATA_LIMIT >> 20} MB")
    with pytest.raises(UserError, match="larger than"):
        read_small_file(run / "model.json", "model.json")
    assert read_small_file(run / "model.json", "model.json", METADATA_LIMIT + 1) == b" " * (METADATA_LIMIT + 1)
