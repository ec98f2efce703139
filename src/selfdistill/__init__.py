"""selfdistill: knowledge distillation centred on self-distillation (DLB, LightSKD and friends).

The public names below are imported on first use, so that ``selfdistill --help`` and one-line errors
do not wait for PyTorch to load (and a Ctrl-C while it loads ends cleanly).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": ".config", "resolve": ".engine", "Trainer": ".engine", "train": ".engine",
    "cross_entropy": ".losses", "kd_kl": ".losses", "DLB": ".methods", "Batch": ".methods", "Outputs": ".methods",
    "build_method": ".methods", "FeatureTaps": ".models", "build_model": ".models", "register_model": ".models",
    "load_model": ".analysis.saved", "DLBHelper": ".plugin",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'selfdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
