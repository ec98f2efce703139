"""Architectures by name, each built as ``build_model(name, num_classes, in_channels, image_size)``.

Every model names its stages ``layer1``, ``layer2``, ... (``model.stages``), ends in a linear
classifier ``fc`` and pools adaptively; intermediate features come from :class:`FeatureTaps`.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import UserError
from .densenet import densenet_bc
from .resnet_cifar import cifar_resnet, resnet18
from .small import MLP, SmallCNN
from .taps import FeatureTaps, tap_names
from .vgg import vgg
from .wrn import wrn

Builder = Callable[[int, int, int], nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    **{f"resnet{d}": cifar_resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": cifar_resnet(8, 4),
    "resnet32x4": cifar_resnet(32, 4),
    "resnet18": resnet18,
    "vgg16": vgg(16),
    "vgg19": vgg(19),
    **{f"wrn{d}_{k}": wrn(d, k) for d, k in ((16, 2), (16, 4), (16, 8), (28, 10), (40, 1), (40, 2))},
    **{f"densenet{d}_k{k}": densenet_bc(d, k) for d, k in ((40, 12), (100, 12), (100, 40), (190, 12))},
}


def model_names() -> list[str]:
    return list(MODELS)


def register_model(name: str, builder: Builder) -> None:
    """Make ``builder(num_classes, in_channels, image_size)`` selectable as ``--model name``."""
    MODELS[name] = builder


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    if name not in MODELS:
        raise UserError.bad_value("model.name", name, ", ".join(MODELS))
    return MODELS[name](num_classes, in_channels, image_size)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["FeatureTaps", "MODELS", "build_model", "count_parameters", "model_names", "register_model", "tap_names"]
