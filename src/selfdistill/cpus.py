"""The CPUs a run may use, how busy the machine is, and how OpenMP's threads wait: no torch here, so that the
command line can settle the wait policy before torch loads.

Why the wait policy: torch's CPU kernels run on OpenMP (GNU libgomp in the PyPI wheels), whose idle threads
spin for a while before they sleep. When other work holds some of the CPUs, a spinning thread takes a CPU
from the thread that has work, and a step waits on a thread that is not running: on a busy 2-core machine
two threads trained cnn and resnet20 about 2x slower than one (``benchmarks/busy_threads.py``, BENCHMARKS.md
"Threads on a busy CPU"). Under ``OMP_WAIT_POLICY=PASSIVE`` they sleep at once and two threads trained about
as fast as one; on a quiet machine sleeping cost 7-8 % against spinning. OpenMP reads the variable once, when
it loads with torch, so :func:`prefer_passive_wait` sets it, when the machine is busy and the user has not set
it, before anything imports torch. The thread count itself is left alone by the load: it is part of a run's
result, and a count that followed the load would differ between a run and its resume.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")  # where cgroup v2 is mounted
PROC_CGROUP = Path("/proc/self/cgroup")  # this process's cgroups
WAIT_POLICY = "OMP_WAIT_POLICY"
_STARTED = (time.monotonic(), sum(os.times()[:2]))  # when this module loaded, and the process's CPU time then


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (as ``taskset`` or a batch system set it), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_threads() -> tuple[int, str]:
    """The thread count of ``train.threads: auto`` and how it was chosen, e.g. ``(2, "2 CPUs usable")``.

    The CPUs this process may use: those it may run on (its affinity, as ``taskset`` or a batch system set
    it; else all of them), fewer where a cgroup v2 CPU quota allows less time (a container's ``--cpus``),
    shared among the processes that torchrun or ``--nproc`` started on this machine (``LOCAL_WORLD_SIZE``);
    at least one. More threads than that only wait on each other. ``OMP_NUM_THREADS`` is not read (torchrun
    sets it to 1). Other work on the machine does not change the count (see the module's docstring).
    """
    cpus = usable_cpus()
    how = f"{cpus} CPU{'s' * (cpus > 1)} usable"
    quota = _cpu_quota()
    if quota is not None and quota < cpus:
        cpus, how = quota, f"a CPU quota of {quota} of {cpus} CPUs"
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    if local > 1:
        how += f" / {local} processes on this machine"
    return max(1, cpus // local), how


def _cpu_quota() -> int | None:
    """Whole CPUs of the tightest cgroup v2 quota (``cpu.max``) on this process's cgroup and its parents;
    None where there is none or it cannot be read."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
        relative = next(line[3:] for line in lines if line.startswith("0::")).strip("/")
    except (OSError, StopIteration):
        return None
    folder, tightest = CGROUP / relative, None
    for limits in (folder, *folder.parents):
        try:
            quota, period = (limits / "cpu.max").read_text().split()[:2]
            cpus = max(1, int(quota) // int(period))
            tightest = cpus if tightest is None else min(tightest, cpus)
        except (OSError, ValueError):  # no file here, or "max" (no quota)
            pass
        if limits == CGROUP:
            break
    return tightest


def prefer_passive_wait() -> bool:
    """On a busy machine (:func:`machine_busy` for the threads ``auto`` would take), set
    ``OMP_WAIT_POLICY=PASSIVE`` for this process and its children, unless the user chose a policy or torch (and
    with it OpenMP) has already loaded, when setting it would change nothing. Returns whether it was set here.

    Only on a busy machine: on a quiet one, spinning threads trained cnn faster than sleeping ones
    (BENCHMARKS.md, "Threads on a busy CPU"). The load is read once, at start; a machine that becomes busy
    later keeps the policy the run started with."""
    if WAIT_POLICY in os.environ or "torch" in sys.modules or not machine_busy(auto_threads()[0]):
        return False
    os.environ[WAIT_POLICY] = "PASSIVE"
    return True


def waits_passively() -> bool:
    """Whether OpenMP's threads sleep at once when idle, as far as this process can tell (the variable as it
    is now; torch read it when it loaded)."""
    return os.environ.get(WAIT_POLICY, "").strip().upper() == "PASSIVE"


def machine_busy(threads: int) -> str | None:
    """A few words on other work when it holds CPUs that ``threads`` threads would want, e.g. ``"busy: load 3.1
    on 2 CPUs"``; None on a quiet machine or where the load cannot be read.

    The 1-minute load average counts the machine's runnable tasks, this process's own included: its share is
    taken off (:func:`own_load`), so that a second run in one process (the demo's DLB after its CE) does not
    find its own first run. The machine is busy when fewer than ``threads`` CPUs are left, with one CPU's
    worth of slack for short jobs."""
    try:
        load = max(0.0, os.getloadavg()[0] - own_load())
    except (AttributeError, OSError):
        return None
    total = os.cpu_count() or 1
    if total - load > threads - 1:
        return None
    return f"busy: load {load:.1f} on {total} CPU{'s' * (total > 1)}"


def own_load() -> float:
    """This process's part of the 1-minute load average, roughly: the CPUs it kept busy on average since this
    module loaded, counted over at least a minute (the average's time scale)."""
    started, cpu = _STARTED
    return max(0.0, sum(os.times()[:2]) - cpu) / max(60.0, time.monotonic() - started)
