"""The signals that stop a command: Ctrl-C (SIGINT), SIGTERM (``kill``, ``docker stop``, systemd, a cluster's
scheduler at the end of a job's time) and SIGHUP (the terminal or the SSH session closed).

Each ends a command the way Ctrl-C does: with one line saying what was kept (a training run's last
checkpoint, and how to resume it), and the exit code a shell gives a program the signal stops, 128 + its
number (130, 143, 129). Ctrl-C raises ``KeyboardInterrupt``; SIGTERM and SIGHUP raise :class:`Stopped`, a
``KeyboardInterrupt``, so every clean-up that Ctrl-C gets runs for them too. This module stands on the
standard library alone, so that the command line can hold signals back from its very first imports.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # raise Stopped; SIGINT raises KeyboardInterrupt as Python has it
HELD_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C would raise ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a command that ``exc`` stopped: 128 + the signal's number, as a shell reports it."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else signal.SIGINT)


def stop_words(exc: KeyboardInterrupt) -> str:
    """How a failure line says that ``exc`` stopped the command: "interrupted" (Ctrl-C), "stopped by SIGTERM"."""
    return f"stopped by {signal.Signals(exc.signum).name}" if isinstance(exc, Stopped) else "interrupted"


def stopped_line(exc: KeyboardInterrupt, argv: list[str]) -> str:
    """The line of a command ``argv`` that ``exc`` stopped before it began its work (a run: before training)."""
    before = " before training started; nothing was written" if argv[:1] == ["train"] else ""
    return f"selfdistill: {stop_words(exc)}{before}"


def as_exception(signum: int) -> KeyboardInterrupt:
    """What signal ``signum`` raises: ``KeyboardInterrupt`` for SIGINT, :class:`Stopped` for the others."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def _ours_to_take(signum: int) -> bool:
    """Whether this process may handle ``signum``: only in the main thread, and only where Python's own
    behaviour, or one of ours, is in place (a handler someone else installed, or SIGHUP ignored under
    ``nohup``, stays)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signum)
    default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    return handler is default or getattr(handler, "selfdistill", False)


def _ours(handler: Any) -> Any:
    handler.selfdistill = True
    return handler


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP raise :class:`Stopped` instead of ending the process on the spot. Only the
    first raises: the ones after it arrive while the command is already stopping, and are let pass."""
    mine = [s for s in STOP_SIGNALS if _ours_to_take(s)]
    raised: list[int] = []

    previous = {signum: signal.getsignal(signum) for signum in mine}

    @_ours
    def stop(signum: int, _frame: Any) -> None:
        if not raised:
            raised.append(signum)
            raise Stopped(signum)

    for signum in mine:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """Hold back Ctrl-C, SIGTERM and SIGHUP while modules load: an interrupt in the middle of ``import torch``
    leaves torch half-initialised (a page of tracebacks, even a segfault). The signals that arrive are noted,
    in order, for the caller to act on afterwards (see :func:`as_exception`)."""
    held: list[int] = []
    mine = [s for s in HELD_SIGNALS if _ours_to_take(s)]
    previous = {signum: signal.getsignal(signum) for signum in mine}
    for signum in mine:
        signal.signal(signum, _ours(lambda signum, _frame: held.append(signum)))
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
