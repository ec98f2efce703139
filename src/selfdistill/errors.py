"""Errors that end a command with one clear line instead of a traceback, each with its exit code.

====  =====================================================================================
code  meaning
====  =====================================================================================
0     done
1     a bug in selfdistill (the only case that prints a traceback; please report it)
2     ``UserError``: bad input the user can fix (a flag, a config key, a data file, an unusable
      ``--out``, a run directory held by another run); nothing was started or written
3     ``TrainingDiverged``: the loss or the evaluated predictions stopped being finite; the last
      good checkpoint stays on disk
4     ``OutputError``: a write to the run directory failed during the run (disk full, I/O
      error); the temporary file is removed and the last good checkpoint stays on disk
5     ``PeerFailure``: another process of a distributed run stopped, failed or timed out
130   interrupted (Ctrl-C); 143 and 129 stopped by SIGTERM and SIGHUP, as Ctrl-C stops a command
      (128 + the signal's number; see :mod:`selfdistill.interrupts`)
====  =====================================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class SelfdistillError(Exception):
    """Base class: an error whose message is one line and which ends the command with ``exit_code``."""

    exit_code = 1


class UserError(SelfdistillError):
    """A problem with the input that the user can fix; the message is one line."""

    exit_code = 2

    @classmethod
    def bad_value(cls, field: str, value: Any, allowed: str, choices: Iterable[str] = ()) -> UserError:
        """``field=value is not allowed; allowed: ...``, with a "did you mean" when ``choices`` has a near match."""
        return cls(f"{field}={value!r} is not allowed{did_you_mean(value, choices)}; allowed: {allowed}")


class TrainingDiverged(SelfdistillError):
    """The training loss, or the evaluated predictions, became NaN or infinite."""

    exit_code = 3


class OutputError(SelfdistillError):
    """Writing to the run directory failed during the run (the last good checkpoint is kept)."""

    exit_code = 4


class PeerFailure(SelfdistillError):
    """Another process of a distributed run stopped, failed or did not answer in time."""

    exit_code = 5


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ``UserError`` naming ``field`` and what is ``allowed`` unless ``condition`` holds."""
    if not condition:
        raise UserError.bad_value(field, value, allowed)


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``value``, or an empty string."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != value else ""


def one_line(text: object) -> str:
    """``text`` with line breaks and runs of spaces collapsed, for messages quoting other errors."""
    return " ".join(str(text).split())


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # every character str.splitlines() breaks at


def printable_line(text: str) -> str:
    """``text`` with every line-breaking character escaped, so that it prints as exactly one line."""
    return "".join(ch.encode("unicode_escape").decode() if ch in LINE_BREAKS else ch for ch in text)
