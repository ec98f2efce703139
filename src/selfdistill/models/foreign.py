"""Temporary stand-in; replaced by the zoo's key maps."""
from typing import Any


def is_foreign_checkpoint(obj: Any) -> bool:
    return False


def to_our_keys(arch: str, state: Any) -> Any:
    raise NotImplementedError
