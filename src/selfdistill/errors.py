"""Errors that end a command with one clear line instead of a traceback.

``UserError`` covers everything a user can fix (a bad flag, a missing data file, a config key that does
not exist); the CLI prints its message and exits with code 2. ``TrainingDiverged`` is raised when the
loss stops being finite; the CLI exits with code 3 and the last good checkpoint stays on disk.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A problem with the input that the user can fix; the message is one line."""

    @classmethod
    def bad_value(cls, field: str, value: Any, allowed: str) -> UserError:
        return cls(f"{field}={value!r} is not allowed; allowed: {allowed}")


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite."""


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ``UserError`` naming ``field`` and what is ``allowed`` unless ``condition`` holds."""
    if not condition:
        raise UserError.bad_value(field, value, allowed)
