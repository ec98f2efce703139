"""Whole processes: DDP under torchrun and under `selfdistill train --nproc` (2 processes, gloo, on the CPU
also where there is a GPU: two processes would need two GPUs), and what a distributed run does with bad
input and with a process that stops. (Kills and resumes of single runs are in test_nothing_lost.py.)"""

import contextlib
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
           "--device", "cpu", "--epochs", "2", "--batch-size", "64", "--out", str(out),
           "--set", "data.train_subset=1000"]
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


def test_torchrun_gathers_per_sample_memory_and_trains_heads(tmp_path):
    out = tmp_path / "ddp"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "selfdistill", "train", "--method", "drg+ps_kd",
           "--device", "cpu", "--epochs", "1", "--out", str(out), "--set", "data.train_subset=400"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    memories = [rank["ps_kd"]["memory"] for rank in state["method"]]
    assert torch.equal(memories[0], memories[1])  # each rank saw the other's predictions
    assert (memories[0].max(1).values < 1).all()  # every sample, from either shard, was written
    assert any("drg" in key for key in state["extras"]) and json.loads((out / "metrics.json").read_text())[
        "extra_parameters"] > 0


SYNTH = ["--device", "cpu", "--dataset", "synthetic", "--model", "mlp", "--batch-size", "16",
         "--set", "train.tensorboard=false", "--set", "data.synthetic={train_size: 64, test_size: 32, size: 8}"]


def test_bad_input_under_torchrun_is_printed_once_by_rank_0(tmp_path):
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "selfdistill", "train", "--method", "nope",
           "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0  # torchrun reports any failed worker as 1, whatever the worker said
    assert result.stderr.count("selfdistill: error: method.name='nope' is not allowed") == 1
    assert "exitcode  : 2" in result.stderr and not (tmp_path / "run").exists()


def test_nproc_refuses_bad_config_before_starting_processes(tmp_path):
    result = run_cli("train", "--nproc", "2", "--method", "nope", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "method.name" in result.stderr


def test_nproc_reports_a_worker_error_once_with_its_exit_code(tmp_path):
    result = run_cli("train", "--nproc", "2", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                     "--set", "data.download=false", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cifar-10-batches-py" in result.stderr and not (tmp_path / "run").exists()


def test_nproc_trains_like_torchrun(tmp_path):
    result = run_cli("train", "--nproc", "2", *SYNTH, "--epochs", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["test_images"] == 32
    assert result.stdout.count("epoch 2/2 |") == 1


def test_a_finished_distributed_run_leaves_no_process_group_threads(tmp_path):
    """Each rank's gloo threads are stopped when the run ends, not left running into interpreter exit (where
    they aborted a rank now and then): nothing may keep the process group alive past its destruction."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, pathlib, sys\n"
        "from selfdistill.cli import main\n"
        "code = main(sys.argv[2:])\n"
        "threads = sorted(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task'))\n"
        "pathlib.Path(sys.argv[1], 'rank' + os.environ['RANK']).write_text(f'{code} {threads}')\n"
        "sys.exit(code)\n")
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(driver), str(tmp_path), "train", *SYNTH,
           "--epochs", "1", "--method", "dml", "--set", "method.peers=[mlp]", "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)]
    assert all(report.split()[0] == "0" for report in reports), reports  # each rank's main() returned 0
    assert not any("gloo" in report for report in reports), reports


def _children(pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes started by the launcher ``pid``."""
    out = {}
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next(int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK="))
        out[rank] = int(child)
    return out


def test_a_stopped_process_makes_the_others_fail_within_the_timeout(tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "selfdistill", "train", "--nproc", "2", *SYNTH, "--epochs",
                                 "1000", "--out", str(out), "--set", "train.dist_timeout=5"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    workers = _children(launcher.pid)
    os.kill(workers[1], signal.SIGSTOP)  # alive, but answering nobody: the case a timeout exists for
    stopped = time.time()
    try:
        _, err = launcher.communicate(timeout=120)
    finally:
        for pid in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert launcher.returncode == 5 and time.time() - stopped < 60
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rank 0: another process did not answer within train.dist_timeout=5 s" in lines[0]
    assert "is kept" in lines[0] and torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_ctrl_c_under_nproc_ends_with_one_line(tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "selfdistill", "train", "--nproc", "2", *SYNTH, "--epochs",
                                 "1000", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole process group
    _, err = launcher.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert launcher.returncode == 130 and len(lines) == 1, err
    assert lines[0].startswith("selfdistill: interrupted; the checkpoint of epoch") and "--resume" in lines[0]


def test_nproc_trains_every_network_of_an_online_method_with_paused_rounds(tmp_path):
    """DML's sequential variant pauses all networks but one in each round: DDP still gets a (zero) gradient
    from every network it forwarded, so no process waits for a reduction that never comes."""
    result = run_cli("train", "--nproc", "2", *SYNTH, "--epochs", "2", "--method", "dml+dlb", "--set",
                     "method.dml.sequential=true", "--set", "method.dml.peers=[cnn]", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["networks"]["peer1"]["model"] == "cnn"
    assert metrics["peer1_test_top1"] is not None and (tmp_path / "run" / "peer1.pt").is_file()
    assert "peer1_dlb_kl" in (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
