"""A shared CPU: on a busy machine the command line makes OpenMP's idle threads sleep (set before torch loads),
and the start line says when other work keeps the machine busy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, cli_main
from selfdistill import cpus as cpu_info
from selfdistill.engine.runtime import describe_threads


@pytest.fixture
def machine(monkeypatch):
    """Set the machine's CPU count and 1-minute load average (None: the load cannot be read)."""
    def set_machine(total: int, load: float | None, own: float = 0.0) -> None:
        monkeypatch.setattr(os, "cpu_count", lambda: total)
        monkeypatch.setattr(cpu_info, "own_load", lambda: own)

        def loadavg() -> tuple[float, float, float]:
            if load is None:
                raise OSError("no load average here")
            return load, load, load
        monkeypatch.setattr(os, "getloadavg", loadavg)
    return set_machine


@pytest.mark.parametrize("total, load, threads, busy", [
    (2, 3.14, 2, "busy: load 3.1 on 2 CPUs"),
    (2, 1.0, 2, "busy: load 1.0 on 2 CPUs"),  # one CPU's worth of other work takes one of two threads' CPUs
    (2, 0.6, 2, None),  # noise: short jobs, this process's own start
    (2, 1.5, 1, None),  # one thread still finds a CPU
    (64, 30.0, 8, None),  # a big machine's load leaves plenty for eight threads
    (64, 60.0, 8, "busy: load 60.0 on 64 CPUs"),
    (2, None, 2, None),
])
def test_a_machine_is_busy_when_other_work_holds_the_cpus_the_threads_want(machine, total, load, threads, busy):
    machine(total, load)
    assert cpu_info.machine_busy(threads) == busy


def test_this_process_own_work_is_not_other_work(machine):
    machine(2, 1.6, own=1.5)  # the demo's DLB run, after its CE run in the same process
    assert cpu_info.machine_busy(2) is None
    machine(2, 3.6, own=1.5)
    assert cpu_info.machine_busy(2) == "busy: load 2.1 on 2 CPUs"


def test_own_load_is_the_cpu_time_used_since_start_over_at_least_a_minute(monkeypatch):
    clock = {"wall": 1000.0, "cpu": 50.0}
    monkeypatch.setattr(cpu_info, "_STARTED", (1000.0, 50.0))
    monkeypatch.setattr(time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(os, "times", lambda: (clock["cpu"], 0.0, 0.0, 0.0, 0.0))
    clock.update(wall=1010.0, cpu=65.0)  # 15 CPU seconds in 10 s: over a minute, a quarter of a CPU
    assert cpu_info.own_load() == pytest.approx(0.25)
    clock.update(wall=1120.0, cpu=230.0)  # 180 CPU seconds in 120 s: 1.5 CPUs
    assert cpu_info.own_load() == pytest.approx(1.5)


def test_the_start_line_says_the_machine_is_busy_and_what_helps(machine, monkeypatch):
    machine(2, 3.0)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    spinning = describe_threads(2, "2 CPUs usable")
    assert spinning.startswith(", 2 threads (auto: 2 CPUs usable; machine busy: load 3.0 on 2 CPUs; ")
    assert "OMP_WAIT_POLICY=PASSIVE before torch loads, or --threads 1" in spinning
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert describe_threads(2, None) == (", 2 threads (machine busy: load 3.0 on 2 CPUs; idle threads sleep "
                                         "(OMP_WAIT_POLICY=PASSIVE))")
    assert describe_threads(1, "1 CPU usable") == ", 1 thread (auto: 1 CPU usable)"  # nothing for one thread
    machine(2, 0.2)
    assert describe_threads(2, "2 CPUs usable") == ", 2 threads (auto: 2 CPUs usable)"


def test_a_training_run_on_a_busy_machine_says_so(machine, monkeypatch, tmp_path, capsys):
    machine(2, 4.0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cpu_info, "PROC_CGROUP", tmp_path / "no-cgroup")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    code, stdout, _ = cli_main(capsys, "train", "--device", "cpu", "--dataset", "synthetic", "--model", "mlp",
                               "--batch-size", "16", "--epochs", "1", "--set", "train.progress=false",
                               "--set", "data.synthetic={train_size: 32, test_size: 16, size: 8}",
                               "--set", "train.tensorboard=false")
    assert code == 0
    assert "| cpu, 2 threads (auto: 2 CPUs usable; machine busy: load 4.0 on 2 CPUs; idle threads sleep" in stdout


# In a fresh interpreter: the environment OpenMP finds when torch is first imported.
POLICY_AT_TORCH_IMPORT = textwrap.dedent("""
    import importlib.abc, os, sys
    seen = []

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not seen:
                seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
            return None

    sys.meta_path.insert(0, Watch())
    load = float(sys.argv[1])
    os.getloadavg = lambda: (load, load, load)  # the machine's load at start
    from selfdistill import cli
    code = cli.main(sys.argv[2:])
    print("policy when torch loaded:", seen[0] if seen else "torch not loaded", file=sys.stderr)
""")


@pytest.mark.parametrize("load, preset, expected", [
    (1000.0, None, "PASSIVE"),  # busy: idle threads sleep
    (0.0, None, "unset"),  # quiet: OpenMP's default spin, faster there
    (1000.0, "ACTIVE", "ACTIVE"),  # the user's choice stands
])
def test_on_a_busy_machine_the_command_line_makes_idle_threads_sleep_before_torch_loads(load, preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    done = subprocess.run([sys.executable, "-c", POLICY_AT_TORCH_IMPORT, str(load), "models"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"policy when torch loaded: {expected}" in done.stderr


def test_nothing_is_set_once_torch_has_loaded(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "torch" in sys.modules  # this test process imported it
    assert cpu_info.prefer_passive_wait() is False and "OMP_WAIT_POLICY" not in os.environ
