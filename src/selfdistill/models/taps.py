"""Intermediate features by forward hooks, addressed by module path: no change to the model.

    taps = FeatureTaps(model, ["layer2", "fc:input"])
    logits = model(x)
    taps["layer2"]      # output of model.layer2 in that forward
    taps["fc:input"]    # input of model.fc, i.e. the pooled penultimate feature

Works on any ``nn.Module`` (user models too); ``remove()`` (or leaving a ``with`` block) detaches
the hooks. Outside :meth:`FeatureTaps.record` each tap keeps the latest call's feature; inside it,
the features of every call are kept and joined along the batch, so a step whose rows go through the
model in several forward calls gets features row-aligned with its logits.

A tap records the tensor the module returns (or, with ``:input``, receives), so the model must not
change that tensor in place later in the forward. Where a model's own modules say that they do, the tap
records a copy: a block lists in ``inplace_outputs`` the children whose outputs its forward changes in
place (e.g. a residual block's BN output, to which it adds the shortcut and which it then rectifies),
an in-place module (``inplace=True``) changes its input, and in a ``Sequential`` it changes the output
of the module before it. Any other change is caught when the feature is read (``UserError``), except
in a ``torch.compile`` trace and for tensors made under ``torch.inference_mode`` (no version counter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError


def tap_names(model: nn.Module) -> list[str]:
    """The stage names a model declares (``model.stages``), else its top-level children."""
    return list(getattr(model, "stages", ())) or [name for name, _ in model.named_children()]


def changed_later(modules: dict[str, nn.Module], path: str) -> bool:
    """Whether the forward changes the output of module ``path`` in place after returning it, as declared
    by its parent (``inplace_outputs``, or the next module of a ``Sequential`` being in-place) or, for the
    last module of a ``Sequential``, by the ``Sequential``'s parent (the two return the same tensor)."""
    if not path:
        return False
    parent_path, _, name = path.rpartition(".")
    parent = modules[parent_path]
    if name in getattr(parent, "inplace_outputs", ()):
        return True
    if not isinstance(parent, nn.Sequential):
        return False
    names = [n for n, _ in parent.named_children()]
    i = names.index(name)
    if i + 1 < len(names):
        return bool(getattr(parent[i + 1], "inplace", False))
    return changed_later(modules, parent_path)


def _version(feature: Any) -> int | None:
    """The tensor's in-place version counter; None where there is none to read: not a tensor, an inference
    tensor, or inside a ``torch.compile`` trace (reading it there would break the graph)."""
    if torch.compiler.is_compiling() or not isinstance(feature, torch.Tensor) or feature.is_inference():
        return None
    return feature._version


class FeatureTaps:
    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        modules = dict(model.named_modules())
        self.features: dict[str, torch.Tensor] = {}
        self._versions: dict[str, list[int | None]] = {}  # of each recorded tensor, to see later changes
        self._recording: dict[str, list[torch.Tensor]] | None = None
        self._handles = []
        for path in paths:
            name, _, kind = path.partition(":")
            if name not in modules or kind not in ("", "input", "output"):
                allowed = ", ".join(tap_names(model))
                raise UserError(f"no module '{path}' to tap in {type(model).__name__}; allowed: {allowed} "
                                "(any dotted module path, optionally with ':input')")
            module = modules[name]
            if kind == "input":  # recorded before the module runs, as an in-place module changes its input
                keep = self._keeper(path, copy=bool(getattr(module, "inplace", False)))
                self._handles.append(module.register_forward_pre_hook(lambda _, inputs, keep=keep: keep(inputs[0])))
            else:
                keep = self._keeper(path, copy=changed_later(modules, name))
                self._handles.append(module.register_forward_hook(lambda _, inputs, out, keep=keep: keep(out)))

    def _keeper(self, path: str, copy: bool) -> Callable[[Any], None]:
        def keep(feature: Any) -> None:
            if copy:
                feature = feature.clone()
            if self._recording is None:
                self.features[path], self._versions[path] = feature, [_version(feature)]
            else:
                self._recording.setdefault(path, []).append(feature)
                self._versions.setdefault(path, []).append(_version(feature))
        return keep

    def _check(self, path: str, parts: list[Any], versions: list[int | None]) -> None:
        """Raise if a recorded tensor was changed in place after it was recorded."""
        if any(version is not None and _version(part) != version for part, version in zip(parts, versions)):
            raise UserError(f"tap '{path}': {type(self).__name__} recorded a tensor that the model then changed in "
                            "place, so it is not what the module gave; tap the enclosing module instead, or list the "
                            "module in its parent's inplace_outputs (see selfdistill.models.taps)")

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Collect the features of every forward call inside the block, joined in call order."""
        self._recording, self._versions = {}, {}
        try:
            yield
        finally:
            recorded, versions, self._recording = self._recording, self._versions, None
            self.features = {p: parts[0] if len(parts) == 1 else torch.cat(parts) for p, parts in recorded.items()}
            self._versions = {p: [_version(f)] for p, f in self.features.items()}
        for path, parts in recorded.items():
            self._check(path, parts, versions[path])

    def __getitem__(self, path: str) -> torch.Tensor:
        self._check(path, [self.features[path]], self._versions[path])
        return self.features[path]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
