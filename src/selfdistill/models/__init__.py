"""Architectures by name, each built as ``build_model(name, num_classes, in_channels, image_size)``.

Every model names its stages ``layer1``, ``layer2``, ... (``model.stages``), ends in a linear
classifier ``fc`` and pools adaptively; intermediate features come from :class:`FeatureTaps`.
``model.head(x)`` maps the last stage's output ``x`` to the logits (``model.head(last stage) ==
model(input)``), and ``fc``'s input is the pooled penultimate feature (tap ``"fc:input"``).

The CIFAR-100 KD benchmark's zoo (RepDistiller's ``models/__init__.py`` ``model_dict``, also
mdistiller's ``cifar_model_dict``) is here under its names: ``resnet8`` ... ``resnet110``,
``resnet8x4``, ``resnet32x4``, ``ResNet50``, ``wrn_16_1`` ... ``wrn_40_2``, ``vgg8``, ``vgg11``,
``vgg13``, ``MobileNetV2``, ``ShuffleV1``, ``ShuffleV2``, with lower-case aliases ``resnet50_cifar``,
``mobilenetv2_x0_5``, ``shufflenetv1``, ``shufflenetv2``. The exception: RepDistiller's ``vgg16`` /
``vgg19`` are our ``vgg16_bn`` / ``vgg19_bn``, as ``vgg16`` / ``vgg19`` keep the DLB form (see
``vgg.py``). ``foreign.py`` loads the benchmark's published checkpoints into these models.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import UserError
from .densenet import densenet_bc
from .mobilenetv2 import mobilenetv2
from .resnet_bottleneck import resnet50_cifar
from .resnet_cifar import cifar_resnet, resnet18
from .shufflenet import shufflenet_v1, shufflenet_v2
from .small import MLP, SmallCNN
from .taps import FeatureTaps, tap_names
from .vgg import reference_vgg, vgg
from .wrn import wrn

Builder = Callable[[int, int, int], nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    **{f"resnet{d}": cifar_resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": cifar_resnet(8, 4),
    "resnet32x4": cifar_resnet(32, 4),
    "resnet18": resnet18,
    "ResNet50": resnet50_cifar,
    "vgg16": vgg(16),
    "vgg19": vgg(19),
    **{f"vgg{d}": reference_vgg(d) for d in (8, 11, 13)},
    **{f"vgg{d}_bn": reference_vgg(d) for d in (16, 19)},
    **{f"wrn{d}_{k}": wrn(d, k) for d, k in ((16, 1), (16, 2), (16, 4), (16, 8), (28, 10), (40, 1), (40, 2))},
    **{f"densenet{d}_k{k}": densenet_bc(d, k) for d, k in ((40, 12), (100, 12), (100, 40), (190, 12))},
    "MobileNetV2": mobilenetv2(6, 0.5),
    "ShuffleV1": shufflenet_v1,
    "ShuffleV2": shufflenet_v2,
}
# Second names of the models above (the same builder): RepDistiller's WRN spelling and lower-case names.
ALIASES = {"wrn_16_1": "wrn16_1", "wrn_16_2": "wrn16_2", "wrn_40_1": "wrn40_1", "wrn_40_2": "wrn40_2",
           "resnet50_cifar": "ResNet50", "mobilenetv2_x0_5": "MobileNetV2", "shufflenetv1": "ShuffleV1",
           "shufflenetv2": "ShuffleV2"}
MODELS.update({alias: MODELS[name] for alias, name in ALIASES.items()})


# The architectures that train faster in channels_last (NHWC) than in NCHW on a CPU, so ``train.channels_last:
# auto`` uses it there. One training step, batch 64, 2 threads, torch 2.13, this project's 2-core CPU, NHWC/NCHW time
# (benchmarks/layout.py; BENCHMARKS.md "Memory layout on a CPU"): cnn 0.73, resnet20 0.79-0.82, resnet8x4 0.90,
# wrn_16_1 0.82, MobileNetV2 0.66; resnet18 and the other basic-block ResNets and WRNs share those blocks.
# Slower in NHWC: vgg8 1.03, vgg13 1.35, ShuffleV1 2.27, ShuffleV2 1.32; the others (mlp, densenet, ResNet50's
# bottlenecks) stay NCHW on a CPU until measured. A GPU always takes channels_last.
CPU_CHANNELS_LAST = frozenset({"cnn", "resnet18", "resnet8x4", "resnet32x4", "MobileNetV2", "mobilenetv2_x0_5",
                               *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
                               *(n for n in MODELS if n.startswith("wrn"))})


def faster_in_channels_last_on_cpu(name: str) -> bool:
    """Whether architecture ``name`` trains faster in channels_last on a CPU (measured; see ``CPU_CHANNELS_LAST``)."""
    return name in CPU_CHANNELS_LAST


def model_names() -> list[str]:
    return list(MODELS)


def register_model(name: str, builder: Builder) -> None:
    """Make ``builder(num_classes, in_channels, image_size)`` selectable as ``--model name``."""
    MODELS[name] = builder


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    if name not in MODELS:
        raise UserError.bad_value("model.name", name, ", ".join(MODELS))
    model = MODELS[name](num_classes, in_channels, image_size)
    model.arch = name  # the name messages use (e.g. foreign.check_state_fits)
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["ALIASES", "CPU_CHANNELS_LAST", "FeatureTaps", "MODELS", "build_model", "count_parameters",
           "faster_in_channels_last_on_cpu", "model_names", "register_model", "tap_names"]
