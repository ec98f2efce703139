"""Signals that stop a command, in real processes: SIGTERM and SIGHUP stop a training run as Ctrl-C does (one
line saying what was kept, 128 + the signal's number, and `--resume` finishes the run), and a signal that
comes while the command line's own modules load ends with the same line, not a traceback from an import.

The driver scripts stand in for the `selfdistill` console script (``from selfdistill.cli import main``) and
for ``python -m selfdistill``; each waits at a marked moment, so that the signal lands there and nowhere else."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cli

TINY = ["train", "--device", "cpu", "--dataset", "synthetic", "--model", "mlp", "--batch-size", "16", "--epochs", "3",
        "--set", "train.tensorboard=false", "--set", "data.synthetic={train_size: 64, test_size: 32, size: 8}"]

# trains as `selfdistill`, but waits at the start of epoch 2 (after the checkpoint of epoch 1), or while the run
# is being built (before anything is written), once it has said so in the file named by its first argument
WAIT_IN_TRAINING = """
import pathlib, sys, time
from selfdistill.engine import Trainer

marker, where = pathlib.Path(sys.argv[1]), sys.argv[2]
original_epoch, original_build = Trainer.train_epoch, Trainer._build

def wait():
    marker.write_text("waiting")
    time.sleep(300)

def train_epoch(self, epoch):
    if where == "training" and epoch == 1:
        wait()
    return original_epoch(self, epoch)

def build(self, dataset):
    if where == "building":
        wait()
    return original_build(self, dataset)

Trainer.train_epoch, Trainer._build = train_epoch, build
from selfdistill.cli import main
sys.exit(main(sys.argv[3:]))
"""


def start(tmp_path: Path, script: str, *args: str) -> tuple[subprocess.Popen, Path]:
    driver, marker = tmp_path / "driver.py", tmp_path / "marker"
    driver.write_text(textwrap.dedent(script))
    proc = subprocess.Popen([sys.executable, str(driver), str(marker), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, marker


def wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver never reached its waiting point"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_run_says_what_it_kept_and_resumes(tmp_path, sig):
    out = tmp_path / "run"
    proc, marker = start(tmp_path, WAIT_IN_TRAINING, "training", *TINY, "--out", str(out))
    wait_for(marker, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert err == (f"selfdistill: stopped by {name}; the checkpoint of epoch 1 in {out} is kept: "
                   f"`selfdistill train --out {out} --resume` continues from it\n")
    assert not (out / ".lock").exists() and not (out / "metrics.json").exists()
    resumed = run_cli("train", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} after epoch 1" in resumed.stdout
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_a_run_terminated_before_training_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    proc, marker = start(tmp_path, WAIT_IN_TRAINING, "building", *TINY, "--out", str(out))
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err == "selfdistill: stopped by SIGTERM before training started; nothing was " \
                                             "written\n", err
    assert not out.exists()


# a signal to itself while the command line's modules load: as the console script and as `python -m selfdistill`
WHILE_LOADING = """
import importlib.abc, os, runpy, signal, sys

marker, sig, how, module = sys.argv[1], signal.Signals[sys.argv[2]], sys.argv[3], sys.argv[4]

class SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), sig)
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["selfdistill", *sys.argv[5:]]
if how == "console script":
    from selfdistill.cli import main
    sys.exit(main())
runpy.run_module("selfdistill", run_name="__main__", alter_sys=True)
"""


LOADING_CASES = [(how, "selfdistill.config", sig, words) for how in ("console script", "python -m")
                 for sig, words in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM"))]
# before cli holds signals: its first import, the module that holds them (SIGTERM there still ends the process at
# once, as Python has it, and no selfdistill code has run)
LOADING_CASES.append(("python -m", "selfdistill.interrupts", signal.SIGINT, "interrupted"))


@pytest.mark.slow
@pytest.mark.parametrize("how, module, sig, words", LOADING_CASES)
def test_a_signal_while_the_command_line_loads_is_one_line(tmp_path, how, module, sig, words):
    """The modules selfdistill.cli imports (selfdistill.config among them) load with signals held; a Ctrl-C
    before that, as ``python -m selfdistill`` imports selfdistill.cli, is caught by ``__main__``."""
    proc, _ = start(tmp_path, WHILE_LOADING, sig.name, how, module, *TINY, "--out", str(tmp_path / "run"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert err == f"selfdistill: {words} before training started; nothing was written\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sigterm_to_the_nproc_launcher_reaches_the_workers_and_ends_with_one_line(tmp_path):
    """`kill` of `selfdistill train --nproc 2` alone (not its process group): the launcher passes SIGTERM on,
    rank 0 says what was kept, and the launcher ends with the signal's code."""
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "selfdistill", *TINY, "--nproc", "2", "--epochs", "1000",
                                 "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoint.pt", launcher)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert launcher.returncode == 143 and len(lines) == 1, err
    assert lines[0].startswith("selfdistill: stopped by SIGTERM; the checkpoint of epoch") and "--resume" in lines[0]
