"""Whole processes: DDP under torchrun (2 processes, gloo) and a run killed with SIGKILL, then resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import run_cli

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def test_torchrun_two_processes_shard_data_and_reduce_metrics(tmp_path):
    out = tmp_path / "ddp"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "selfdistill", "train", "--method", "dlb",
           "--epochs", "2", "--batch-size", "64", "--out", str(out), "--set", "data.train_subset=1000"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["batch_size"] == 64
    assert metrics["test_images"] == 2000  # the whole test set, split across the two ranks, summed
    # each rank trains on its own 500 images per epoch (15 batches of 32 and one of 20), and every batch is
    # replayed one step later except the run's very last one (20 rows per rank)
    assert metrics["train_images_seen"] == 2 * (2 * 2 * 500 - 20)
    assert metrics["steps_per_epoch"] == 16
    assert metrics["test_top1"] > 40
    assert result.stdout.count("epoch 2/2") == 1  # only rank 0 reports


def _train_args(out):
    return ["train", "--method", "dlb", "--epochs", "3", "--out", str(out), "--set", "data.train_subset=1500",
            "--set", "train.deterministic=true", "--set", "train.threads=1"]


def test_killed_run_resumes_to_the_bit_identical_result(tmp_path):
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "selfdistill", *_train_args(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (cut / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (cut / "metrics.json").exists()
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] in (1, 2)

    resumed = run_cli("train", "--out", str(cut), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    full = run_cli(*_train_args(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(cut / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", cut))
    assert ma["test_top1"] == mb["test_top1"] and ma["test_nll"] == mb["test_nll"]


def test_torchrun_gathers_per_sample_memory_and_trains_heads(tmp_path):
    out = tmp_path / "ddp"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "selfdistill", "train", "--method", "drg+ps_kd",
           "--epochs", "1", "--out", str(out), "--set", "data.train_subset=400"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    memories = [rank["ps_kd"]["memory"] for rank in state["method"]]
    assert torch.equal(memories[0], memories[1])  # each rank saw the other's predictions
    assert (memories[0].max(1).values < 1).all()  # every sample, from either shard, was written
    assert any("drg" in key for key in state["extras"]) and json.loads((out / "metrics.json").read_text())[
        "extra_parameters"] > 0
