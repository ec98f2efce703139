"""``selfdistill train --nproc N``: N training processes on this machine, as ``torchrun --standalone``
starts them, but ending the way a single process does: one line on error and selfdistill's exit code.

torchrun turns any failed worker into exit code 1 and a page of its own report, whatever the worker
said; this launcher instead starts the workers itself (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` in their environment, which the engine's process group reads), lets
rank 0 print, stops the others once rank 0 has failed (or a few seconds after another rank failed),
and exits with the failing rank's own code (rank 0's when it failed itself). A worker killed by a
signal it was not sent by us is reported in one line with exit code 5. Multi-machine runs still use
torchrun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from ..errors import PeerFailure
from ..interrupts import HELD_SIGNALS, Stopped, stop_code

GRACE_S = 8.0  # how long the others may take to stop on their own once one process has failed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(argv: list[str], nproc: int) -> int:
    """Run ``selfdistill <argv>`` in ``nproc`` processes; return the exit code the command should end with."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0"}
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs = [subprocess.Popen([sys.executable, "-m", "selfdistill", *argv],
                              env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(nproc)]
    try:
        return _supervise(procs)
    except KeyboardInterrupt as exc:  # a Ctrl-C at the terminal reached the workers too: let them say what they kept
        if isinstance(exc, Stopped):  # SIGTERM or SIGHUP, sent to this process alone: pass it on
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(exc.signum)
        for signum in HELD_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        _stop(procs, signal.SIGINT if not isinstance(exc, Stopped) else exc.signum, first_wait=GRACE_S)
        return stop_code(exc)


def _supervise(procs: list[subprocess.Popen]) -> int:
    codes: dict[int, int] = {}
    stopped_by_us: set[int] = set()
    first_failure = None
    while len(codes) < len(procs):
        for rank, proc in enumerate(procs):
            if rank not in codes and proc.poll() is not None:
                codes[rank] = proc.returncode
                if proc.returncode != 0 and first_failure is None:
                    first_failure = time.monotonic()
        rank0_failed = codes.get(0, 0) != 0  # rank 0 has said what went wrong: nothing more to wait for
        if first_failure is not None and (rank0_failed or time.monotonic() - first_failure > GRACE_S):
            stopped_by_us |= {r for r in range(len(procs)) if r not in codes}
            _stop(procs, signal.SIGTERM)
        time.sleep(0.05)
    own = {r: c for r, c in codes.items() if c != 0 and r not in stopped_by_us}
    if not own:
        return 0
    rank = 0 if 0 in own else min(own)
    code = own[rank]
    if code < 0:  # killed by a signal we did not send
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        print(f"selfdistill: distributed run failed: rank {rank} was killed by {name}", file=sys.stderr, flush=True)
        return PeerFailure.exit_code
    return code


def _stop(procs: list[subprocess.Popen], sig: int, first_wait: float = 0.0) -> None:
    """Give the workers ``first_wait`` seconds to end on their own, send ``sig`` to those still running,
    then kill what is left after a grace period."""
    deadline = time.monotonic() + first_wait
    while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
        time.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped worker receives the signal only once continued
    deadline = time.monotonic() + GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
