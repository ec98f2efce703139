"""Intermediate features by forward hooks, addressed by module path: no change to the model.

    taps = FeatureTaps(model, ["layer2", "fc:input"])
    logits = model(x)
    taps["layer2"]      # output of model.layer2 in that forward
    taps["fc:input"]    # input of model.fc, i.e. the pooled penultimate feature

Works on any ``nn.Module`` (user models too); ``remove()`` (or leaving a ``with`` block) detaches
the hooks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError


def tap_names(model: nn.Module) -> list[str]:
    """The stage names a model declares (``model.stages``), else its top-level children."""
    return list(getattr(model, "stages", ())) or [name for name, _ in model.named_children()]


class FeatureTaps:
    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        modules = dict(model.named_modules())
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in paths:
            name, _, kind = path.partition(":")
            if name not in modules or kind not in ("", "input", "output"):
                allowed = ", ".join(tap_names(model))
                raise UserError(f"no module '{path}' to tap in {type(model).__name__}; allowed: {allowed} "
                                "(any dotted module path, optionally with ':input')")
            self._handles.append(modules[name].register_forward_hook(self._hook(path, kind == "input")))

    def _hook(self, path: str, want_input: bool):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.features[path] = inputs[0] if want_input else output
        return hook

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.features[path]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
