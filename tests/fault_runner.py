"""Runs ``selfdistill`` commands in child processes that can be killed, for the fault-injection tests.

The children are forked from a forkserver that has imported selfdistill and torch once, so a child
starts in milliseconds instead of the seconds a fresh interpreter needs; a child may be killed with
SIGKILL by the parent at a chosen moment, or may SIGKILL itself in the middle of its k-th file write
(after half the bytes of the temporary file are written), which is the worst moment a real ``kill -9``
or power cut can pick.
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import resource
import signal
import tempfile
from pathlib import Path

import torch

TIMING_METRICS = {"wall_s", "train_s", "images_per_s", "peak_memory_mb"}
TIMING_COLUMNS = {"images_per_s", "seconds"}
OUTPUTS = ("config.yaml", "checkpoint.pt", "log.csv", "model.pt", "model.json", "metrics.json")

_CONTEXT = multiprocessing.get_context("forkserver")
# torch._inductor: what train.deterministic imports (3 s), loaded once here instead of in every child
_CONTEXT.set_forkserver_preload(["selfdistill.cli", "selfdistill.engine", "torch._inductor", "fault_runner"])


def _child(argv: list[str], kill_at_write: int | None, stderr: str = os.devnull,
           more_memory: int | None = None) -> None:
    from selfdistill import cli, fileio

    if more_memory is not None:  # the address space it has now, plus more_memory: then MemoryError
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_address_space() + more_memory, hard))

    if kill_at_write is not None:
        original, count = fileio._write_chunk, [0]

        def write_then_die(fd: int, chunk: memoryview) -> int:
            count[0] += 1
            if count[0] == kill_at_write:
                os.write(fd, chunk[: len(chunk) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return original(fd, chunk)

        fileio._write_chunk = write_then_die
    with open(os.devnull, "w") as null, open(stderr, "w") as err, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(err):
        code = cli.main(argv)
    os._exit(code)


def _address_space() -> int:
    """This process's virtual memory size in bytes (``VmSize``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def start(argv: list[str], kill_at_write: int | None = None, stderr: str = os.devnull,
          more_memory: int | None = None) -> multiprocessing.Process:
    """Start ``selfdistill <argv>`` in a child (its stderr written to the file ``stderr``; with ``more_memory``,
    allowed that many bytes of address space beyond what it starts with)."""
    proc = _CONTEXT.Process(target=_child, args=(argv, kill_at_write, stderr, more_memory))
    proc.start()
    return proc


def finish(proc: multiprocessing.Process, timeout: float = 120) -> int:
    """Wait for a child; its exit code (``-9`` if it was killed)."""
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        raise TimeoutError(f"a selfdistill child ran for more than {timeout} s")
    return proc.exitcode


def run(argv: list[str], kill_at_write: int | None = None, kill_after: float | None = None) -> int:
    """Run ``selfdistill <argv>`` in a child, SIGKILLed after ``kill_after`` seconds if still running."""
    proc = start(argv, kill_at_write)
    if kill_after is not None:
        proc.join(kill_after)
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGKILL)
    return finish(proc)


def run_bounded(argv: list[str], timeout: float = 120, more_memory: int = 2 << 30) -> tuple[int, list[str]]:
    """Run ``selfdistill <argv>`` in a child that is stopped (``TimeoutError``) after ``timeout`` seconds and
    gets ``more_memory`` bytes of address space beyond its start: an input that would make a regression
    hang or read until memory runs out then fails the test instead. The exit code and the lines of stderr."""
    with tempfile.NamedTemporaryFile("r") as err:
        code = finish(start(argv, stderr=err.name, more_memory=more_memory), timeout)
        return code, err.read().strip().splitlines()


def _log(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(path.open())]


def assert_same_run(expected: Path, actual: Path) -> None:
    """Every output exists in ``actual`` and equals ``expected``'s, timings aside; weights bit for bit."""
    missing = [name for name in OUTPUTS if not (actual / name).is_file()]
    assert not missing, f"{actual} lacks {missing}"
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (expected, actual))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the weights differ"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (expected, actual))
    for metrics in (ma, mb):
        for key in TIMING_METRICS:
            metrics.pop(key)
    assert ma == mb
    assert _log(expected / "log.csv") == _log(actual / "log.csv")
    assert (expected / "config.yaml").read_text() == (actual / "config.yaml").read_text()
    assert json.loads((expected / "model.json").read_text()) == json.loads((actual / "model.json").read_text())
    assert not [p.name for p in actual.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]
