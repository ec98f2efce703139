"""Intermediate features by forward hooks, addressed by module path: no change to the model.

    taps = FeatureTaps(model, ["layer2", "fc:input"])
    logits = model(x)
    taps["layer2"]      # output of model.layer2 in that forward
    taps["fc:input"]    # input of model.fc, i.e. the pooled penultimate feature

Works on any ``nn.Module`` (user models too); ``remove()`` (or leaving a ``with`` block) detaches
the hooks. Outside :meth:`FeatureTaps.record` each tap keeps the latest call's feature; inside it,
the features of every call are kept and joined along the batch, so a step whose rows go through the
model in several forward calls gets features row-aligned with its logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
        self._recording: dict[str, list[torch.Tensor]] | None = None
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
            feature = inputs[0] if want_input else output
            if self._recording is None:
                self.features[path] = feature
            else:
                self._recording.setdefault(path, []).append(feature)
        return hook

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Collect the features of every forward call inside the block, joined in call order."""
        self._recording = {}
        try:
            yield
        finally:
            recorded, self._recording = self._recording, None
            self.features = {p: parts[0] if len(parts) == 1 else torch.cat(parts) for p, parts in recorded.items()}

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
