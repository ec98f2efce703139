"""A finished run's network, back in Python: ``net, card = selfdistill.load_model("runs/x")``.

The same reading as ``selfdistill eval``: the run's weights (its student's ``model.pt``, or another
network's with ``role``, e.g. ``peer1``) or a weights file given directly, the model card beside them
(architecture, its options, classes, channels, image size, input normalisation; checked against the
weights' SHA-256), the architecture rebuilt and the weights loaded with ``weights_only=True``, every key
and shape checked. The network comes back on the CPU in eval mode; its inputs are images scaled to [0, 1]
and normalised with the card's ``mean`` and ``std`` (zero-padded to ``card.image_size`` first when the
card has ``pad_to``). An architecture added with ``register_model`` is rebuilt only in a process that has
added it too (before ``load_model``); one named ``package.module:function`` where its module is importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch.nn as nn

from ..models.card import ModelCard, read_model_card
from .evaluation import build_fitted, check_architecture, load_weights, locate_weights


class SavedModel(NamedTuple):
    net: nn.Module
    card: ModelCard


def load_model(target: str | Path, role: str | None = None) -> SavedModel:
    """The trained network of ``target`` (a finished run directory or a weights file with its card) and its
    model card; every problem is a one-line ``UserError``."""
    weights = locate_weights(target, role)
    card = read_model_card(weights)
    check_architecture(card.model, weights, f"call selfdistill.register_model({card.model!r}, factory) with the "
                       "factory that built it before load_model, or register that factory as an entry point "
                       "(group selfdistill.models)")
    return SavedModel(build_fitted(card, load_weights(weights), weights).eval(), card)
