"""Nothing lost: kills at every write and at random moments, a full disk, planted symlinks, concurrent
runs, failed and extended runs. Each test would fail if its promise in the README broke."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

import fault_runner
from conftest import cli_main, ctrl_c_in_epoch
from fault_runner import assert_same_run
from selfdistill import fileio
from selfdistill.analysis.metrics import EvalAccumulator
from selfdistill.engine.rundir import RunDir

TINY = ["--dataset", "synthetic", "--model", "mlp", "--method", "dlb", "--epochs", "3", "--batch-size", "16",
        "--set", "data.synthetic={train_size: 96, test_size: 64, size: 12}", "--set", "data.eval_batch_size=64",
        "--set", "train.deterministic=true", "--set", "train.threads=1", "--set", "train.tensorboard=false",
        "--set", "schedule={name: multistep, milestones: [2]}"]
WRITES = 10  # config.yaml, 3 x (checkpoint.pt, log.csv), model.pt, model.json, metrics.json
SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert fault_runner.run(["train", *TINY, "--out", str(out)]) == 0
    start = time.monotonic()  # a second run, timed once the forkserver is warm
    assert fault_runner.run(["train", *TINY, "--out", str(out.parent / "timed")]) == 0
    SECONDS["reference"] = time.monotonic() - start
    return out


@pytest.mark.parametrize("k", range(1, WRITES + 1))
def test_killed_in_the_middle_of_any_write_resumes_to_the_same_run(reference, tmp_path, k):
    out = tmp_path / "run"
    assert fault_runner.run(["train", *TINY, "--out", str(out)], kill_at_write=k) == -9
    code = fault_runner.run(["train", "--out", str(out), "--resume"])
    if k == 1:  # killed while writing config.yaml: nothing to resume, and the first command runs again
        assert code == 2 and not (out / "config.yaml").exists()
        assert fault_runner.run(["train", *TINY, "--out", str(out)]) == 0
    else:
        assert code == 0
    assert_same_run(reference, out)


def test_killed_at_random_moments_resumes_to_the_same_run(reference, tmp_path):
    rng, killed = random.Random(7), 0
    for trial in range(6):
        out = tmp_path / f"run{trial}"
        kill_after = rng.uniform(0.1, 0.9) * SECONDS["reference"]
        code = fault_runner.run(["train", *TINY, "--out", str(out)], kill_after=kill_after)
        killed += code == -9
        if code == -9:  # resume, or start again when it died before config.yaml existed
            resume = ["--resume"] if (out / "config.yaml").exists() else TINY
            code = fault_runner.run(["train", "--out", str(out), *resume])
        assert code == 0
        assert_same_run(reference, out)
    assert killed >= 1  # (how many of the moments fall inside the run depends on the machine's load)


# ----------------------------------------------------------------------------- a full disk
def disk_full_at(monkeypatch, name: str, nth: int = 1) -> None:
    """From the ``nth`` write of ``name`` on, the write fails with ENOSPC after half of the bytes."""
    original, seen = fileio._write_chunk, [0]

    def chunk(fd, data):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            seen[0] += 1
            if seen[0] >= nth:
                os.write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd, data)

    monkeypatch.setattr(fileio, "_write_chunk", chunk)


@pytest.mark.parametrize("name, nth, kept", [("checkpoint.pt", 2, 1), ("log.csv", 3, 3), ("model.pt", 1, 3),
                                             ("metrics.json", 1, 3)])
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(reference, tmp_path, monkeypatch, capsys,
                                                                         name, nth, kept):
    out = tmp_path / "run"
    disk_full_at(monkeypatch, name, nth)
    code, _, err = cli_main(capsys, "train", *TINY, "--out", str(out))
    assert code == 4 and len(err) == 1
    assert str(out) in err[0] and "No space left on device" in err[0] and f"checkpoint of epoch {kept}" in err[0]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == kept
    assert not (out / "metrics.json").exists()  # the run is not marked finished
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file left filling the disk
    monkeypatch.undo()  # space freed: --resume finishes the run as if nothing had happened
    assert cli_main(capsys, "train", "--out", str(out), "--resume")[0] == 0
    assert_same_run(reference, out)


def test_a_full_disk_before_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    disk_full_at(monkeypatch, "config.yaml")
    code, _, err = cli_main(capsys, "train", *TINY, "--out", str(out))
    assert code == 4 and len(err) == 1 and "nothing was kept" in err[0]
    assert not out.exists()


# ----------------------------------------------------------------------------- missing final outputs
@pytest.mark.parametrize("lost", [["model.pt"], ["metrics.json"], ["log.csv"], ["model.json", "model.pt"]])
def test_resume_rebuilds_any_missing_final_output(reference, tmp_path, capsys, lost):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in lost:
        (out / name).unlink()
    code, stdout, _ = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 0 and "writing the missing" in stdout
    assert_same_run(reference, out)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [
    {"model.pt": truncate}, {"metrics.json": truncate}, {"log.csv": truncate},
    {"model.json": lambda p: p.write_text(p.read_text().replace('"mlp"', '"cnn"'))},  # valid JSON, wrong card
    {"model.pt": lambda p: torch.save({"other": torch.zeros(1)}, p)},  # loads, but other weights
    {"model.pt": lambda p: (p.unlink(), os.mkfifo(p))},  # not a regular file: replaced, never opened for reading
])
def test_resume_of_a_finished_run_rebuilds_any_damaged_final_output(reference, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name, spoil in damage.items():
        spoil(out / name)
    code, stdout, err = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 0, err
    assert re.search(r"writing the missing, damaged or outdated [^|]*\b" + re.escape(next(iter(damage))), stdout)
    assert_same_run(reference, out)


def test_resume_of_a_finished_run_with_a_damaged_checkpoint_says_what_still_stands(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    truncate(out / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 2 and len(err) == 1 and "checkpoint.pt cannot be loaded as a checkpoint" in err[0]
    assert "the finished run's model.pt and metrics.json stand on their own" in err[0] and "new --out" in err[0]
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def test_resume_of_a_complete_run_changes_nothing(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, stdout, _ = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 0 and "already finished" in stdout
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


# ----------------------------------------------------------------------------- symlinks
OLD_TEMPORARY_NAMES = [f".{name}.tmp" for name in ("config.yaml", "checkpoint.pt", "log.csv", "model.pt",
                                                   "model.json", "metrics.json")]


def test_planted_symlinks_are_never_followed(reference, tmp_path, monkeypatch, capsys):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("precious")
    with ctrl_c_in_epoch(1):
        assert cli_main(capsys, "train", *TINY, "--out", str(out))[0] == 130
    for name in OLD_TEMPORARY_NAMES:  # the predictable names earlier versions wrote through
        (out / name).symlink_to(victim)
    (out / "log.csv").unlink()
    (out / "log.csv").symlink_to(victim)  # and a link in place of an output itself
    assert cli_main(capsys, "train", "--out", str(out), "--resume")[0] == 0
    assert victim.read_text() == "precious"
    assert not (out / "log.csv").is_symlink()
    for name in OLD_TEMPORARY_NAMES:
        (out / name).unlink()
    assert_same_run(reference, out)


def test_a_symlinked_lock_file_is_refused(tmp_path, capsys):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    (out / ".lock").symlink_to(victim)
    code, _, err = cli_main(capsys, "train", *TINY, "--out", str(out))
    assert code == 2 and len(err) == 1 and "symbolic link" in err[0]
    assert victim.read_text() == "precious" and [p.name for p in out.iterdir()] == [".lock"]


# ----------------------------------------------------------------------------- concurrent runs
def test_a_run_directory_in_use_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunDir.acquire(out, fresh=True)
    try:
        code, _, err = cli_main(capsys, "train", *TINY, "--out", str(out))
        assert code == 2 and len(err) == 1 and f"in use by another run (process {os.getpid()})" in err[0]
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.release()
    assert cli_main(capsys, "train", *TINY, "--out", str(out))[0] == 0  # free again once released


def test_two_runs_started_at_once_into_one_directory(tmp_path):
    out = tmp_path / "run"
    runs = [fault_runner.start(["train", *TINY, "--seed", str(seed), "--out", str(out)]) for seed in (1, 2)]
    codes = sorted(fault_runner.finish(run) for run in runs)
    assert codes == [0, 2]  # one trains, the other is refused
    config = yaml.safe_load((out / "config.yaml").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert config["train"]["seed"] == metrics["seed"] == checkpoint["config"]["train"]["seed"]  # never mixed


# ----------------------------------------------------------------------------- failed runs
def test_a_run_diverging_before_its_first_checkpoint_can_simply_be_run_again(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli_main(capsys, "train", *TINY, "--out", str(out), "--lr", "1e30")
    assert code == 3 and len(err) == 1 and "the command can run again with other settings" in err[0]
    assert not out.exists()
    assert cli_main(capsys, "train", *TINY, "--out", str(out), "--lr", "0.01")[0] == 0


def test_leftovers_of_a_run_killed_before_its_first_checkpoint_are_replaced(tmp_path, capsys):
    out = tmp_path / "run"
    assert fault_runner.run(["train", *TINY, "--out", str(out)], kill_at_write=2) == -9
    assert (out / "config.yaml").exists() and not (out / "checkpoint.pt").exists()
    code, stdout, _ = cli_main(capsys, "train", *TINY, "--out", str(out), "--lr", "0.01")
    assert code == 0 and "never completed an epoch" in stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.01


def test_a_run_diverging_later_keeps_its_checkpoint_and_says_how_to_go_on(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli_main(capsys, "train", *TINY, "--out", str(out), "--set", "optim.lr=0.05",
                            "--set", "schedule={name: multistep, milestones: [1], gamma: 1.0e6}")
    assert code == 3 and len(err) == 1
    assert "checkpoint of epoch 1" in err[0] and "moves this one aside" in err[0] and "--resume would retry" in err[0]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_a_finite_loss_with_non_finite_predictions_is_divergence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(EvalAccumulator, "nll", lambda self: float("inf"))
    code, _, err = cli_main(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 3 and len(err) == 1 and "test NLL is inf" in err[0]


# ----------------------------------------------------------------------------- extending and resuming
def test_a_finished_run_extends_to_the_run_it_would_have_been(reference, tmp_path, capsys):
    short = tmp_path / "short"
    two_epochs = [a if a != "3" else "2" for a in TINY]
    assert cli_main(capsys, "train", *two_epochs, "--out", str(short))[0] == 0
    code, stdout, _ = cli_main(capsys, "train", "--out", str(short), "--resume", "--epochs", "3")
    assert code == 0 and "extending" in stdout
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (reference, short))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((short / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("change, why", [
    (["--set", "schedule.name=cosine", "--set", "schedule.milestones=[]"], "schedule cosine depends on train.epochs"),
    (["--method", "ps_kd"], "method ps_kd depends on train.epochs"),
])
def test_extending_is_refused_where_the_epochs_done_would_differ(tmp_path, capsys, change, why):
    out = tmp_path / "run"
    two_epochs = [a if a != "3" else "2" for a in TINY]
    assert cli_main(capsys, "train", *two_epochs, *change, "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli_main(capsys, "train", "--out", str(out), "--resume", "--epochs", "3")
    assert code == 2 and len(err) == 1 and why in err[0]
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("change, field", [(["--epochs", "1"], "3 epochs are already done"),
                                           (["--threads", "2"], "1 threads, now with cpu, fp32, 2 threads"),
                                           (["--lr", "0.1"], "optim.lr")])
def test_resume_refuses_a_config_that_would_change_the_result(reference, tmp_path, capsys, change, field):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    code, _, err = cli_main(capsys, "train", "--out", str(out), "--resume", *change)
    on_gpu = json.loads((reference / "metrics.json").read_text())["device"] != "cpu"
    if change[0] == "--threads" and on_gpu:  # CPU threads play no part in a GPU run's result: allowed there
        assert code == 0 and err == []
        return
    assert code == 2 and len(err) == 1 and field in err[0]


def test_a_run_finished_by_an_older_version_gets_its_model_card_on_resume(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "model.json").unlink()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state["metrics"], state["last_eval"]  # what checkpoints held before they carried the final metrics
    torch.save(state, out / "checkpoint.pt")
    code, stdout, _ = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 0 and "writing the missing, damaged or outdated model.json" in stdout
    assert json.loads((out / "model.json").read_text()) == json.loads((reference / "model.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())


def test_an_extension_killed_before_its_first_checkpoint_can_be_undone_or_continued(tmp_path, capsys):
    two_epochs = [a if a != "3" else "2" for a in TINY]
    references = {}
    for epochs in (2, 3):
        references[epochs] = tmp_path / f"reference{epochs}"
        args = [a if a != "3" else str(epochs) for a in TINY]
        assert fault_runner.run(["train", *args, "--out", str(references[epochs])]) == 0
    for choice in (2, 3):
        out = tmp_path / f"extended-then-{choice}"
        assert fault_runner.run(["train", *two_epochs, "--out", str(out)]) == 0
        # killed writing the first checkpoint of the extension: metrics.json is gone, config.yaml says 3 epochs
        assert fault_runner.run(["train", "--out", str(out), "--resume", "--epochs", "3"], kill_at_write=2) == -9
        assert not (out / "metrics.json").exists()
        code = fault_runner.run(["train", "--out", str(out), "--resume", *(["--epochs", "3"] if choice == 3 else [])])
        assert code == 0
        assert_same_run(references[choice], out)  # config.yaml included: back to 2 epochs, or on to 3


def test_an_edited_config_yaml_cannot_change_a_run_half_way(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert fault_runner.run(["train", *TINY, "--out", str(out)], kill_at_write=4) == -9  # after epoch 1's checkpoint
    edited = (out / "config.yaml").read_text().replace("lr: 0.05", "lr: 0.5")
    (out / "config.yaml").write_text(edited)
    code, stdout, _ = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 0 and "config.yaml disagreed in optim.lr" in stdout
    assert_same_run(reference, out)


@pytest.mark.parametrize("damage", ["missing", "python tag"])
def test_a_lost_or_damaged_config_yaml_is_rebuilt_from_the_checkpoint(reference, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    if damage == "missing":
        (out / "config.yaml").unlink()
    else:
        (out / "config.yaml").write_text("train: !!python/name:os.system\n")
    code, stdout, _ = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 0 and "config.yaml was missing or unreadable; rewritten from the checkpoint" in stdout
    assert_same_run(reference, out)


def test_resume_refuses_another_device_precision_or_thread_count(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "metrics.json").unlink()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["runtime"]["threads"] = 7  # e.g. threads left to torch's default on a machine with other cores
    torch.save(state, out / "checkpoint.pt")
    code, _, err = cli_main(capsys, "train", "--out", str(out), "--resume")
    # on the CPU: "trained with cpu, fp32, 7 threads, now with cpu, fp32, 1 threads"; a GPU run records no threads
    assert code == 2 and len(err) == 1
    assert re.search(r"trained with (\w[^;]*), 7 threads, now with \1(, 1 threads)?;", err[0]), err[0]


def test_a_diverged_run_is_moved_aside_by_a_rerun_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    diverging = ["--set", "schedule={name: multistep, milestones: [1], gamma: 1.0e6}"]
    code, _, err = cli_main(capsys, "train", *TINY, *diverging, "--out", str(out))
    assert code == 3 and "moves this one aside into diverged-N/" in err[0]
    before = (out / "checkpoint.pt").read_bytes()
    code, stdout, _ = cli_main(capsys, "train", *TINY, "--out", str(out))
    assert code == 0 and f"the diverged run that was here is kept in {out / 'diverged-1'}" in stdout
    assert (out / "diverged-1" / "checkpoint.pt").read_bytes() == before  # nothing lost
    assert not (out / "diverged.json").exists() and (out / "metrics.json").exists()


def test_a_resumed_attempt_that_fails_keeps_the_config_it_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    code, stdout, _ = cli_main(capsys, "train", *TINY, "--lr", "1e30", "--print-config")
    (out / "config.yaml").write_text(stdout)  # what a run killed in its first epoch leaves
    code, _, err = cli_main(capsys, "train", "--out", str(out), "--resume")
    assert code == 3 and "keeps its config.yaml, so `--resume` can run again with other settings" in err[0]
    assert (out / "config.yaml").read_text() == stdout
