"""VGG networks with batch normalisation, in two forms.

``vgg16`` / ``vgg19`` (the DLB form, as in the DLB code): the convolutional part of Simonyan &
Zisserman's VGG with bias-free convolutions and BN-ReLU after every one, a 2x2 max-pool after each of
the five blocks, then a 512-512-C classifier with ReLU and no dropout. The five pooling steps need
inputs of at least 32 x 32 (use ``data.pad_to: 32`` for 28 x 28 datasets). Stages ``layer1``..``layer5``
are the five pooled blocks.

``vgg8`` / ``vgg11`` / ``vgg13`` / ``vgg16_bn`` / ``vgg19_bn`` (the KD-benchmark form): RepDistiller's
``vgg{8,11,13,16,19}_bn`` (``models/vgg.py``, HobbitLong/RepDistiller commit
eedab9d1450cafbc7afbb19f616be0ac08d8aa3b), registered there as ``vgg8`` ... ``vgg19``. Five blocks of
3x3 convolutions *with bias*, each followed by BN and ReLU except the block's last, whose ReLU is
applied after the block; max-pools between the first four blocks, none between the fourth and fifth
(it pools there only for 64 x 64 inputs, which we follow by ``image_size == 64``); global average
pooling and one linear layer 512 -> C. Stage ``layerI`` is the reference's ``blockI-1`` with the pool
before it and the ReLU after it, so the stage outputs are its ``feat[0..4]`` and the last one its
``feat[-2]``; ``fc`` is its ``classifier``. Works on 28 x 28 inputs as is.

Why two forms: they differ in structure (conv bias, the classifier MLP, the pooling), and the bundled
DLB recipes name ``vgg16``/``vgg19`` as the DLB paper's backbones, so those names keep the DLB form
and RepDistiller's 16- and 19-layer models are registered under their function names ``vgg16_bn`` /
``vgg19_bn``. The benchmark's VGG teacher and student (``vgg13``, ``vgg8``) keep RepDistiller's names.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .common import conv_bn_relu, init_weights

CONFIGS = {16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}
WIDTHS = [64, 128, 256, 512, 512]

# RepDistiller's cfg 'S', 'A', 'B', 'D', 'E': the widths of the convolutions of each of the five blocks.
REFERENCE_CONFIGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGG(nn.Module):
    """The DLB form."""

    stages = ("layer1", "layer2", "layer3", "layer4", "layer5")

    def __init__(self, depth: int, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        if image_size < 32:
            raise UserError(f"VGG needs inputs of at least 32x32, got {image_size}x{image_size}; "
                            "set data.pad_to=32")
        cin = in_channels
        for name, convs, width in zip(self.stages, CONFIGS[depth], WIDTHS):
            layers = [conv_bn_relu(cin if i == 0 else width, width) for i in range(convs)]
            setattr(self, name, nn.Sequential(*layers, nn.MaxPool2d(2)))
            cin = width
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Linear(512, 512), nn.ReLU(True))
        self.fc = nn.Linear(512, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: pooling, the 512-512 MLP, ``fc``."""
        return self.fc(self.classifier(self.pool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.head(x)


def vgg(depth: int) -> Callable[[int, int, int], VGG]:
    return lambda num_classes, in_channels, image_size: VGG(depth, num_classes, in_channels, image_size)


class VGGBlock(nn.Module):
    """An optional 2x2 max-pool, then ``body`` (conv-BN-ReLU ... conv-BN), then ReLU."""

    def __init__(self, cin: int, widths: list[int], pool: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        self.body = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(self.pool(x)))


class ReferenceVGG(nn.Module):
    """The KD-benchmark (RepDistiller) form."""

    stages = ("layer1", "layer2", "layer3", "layer4", "layer5")

    def __init__(self, depth: int, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        cin = in_channels
        for i, (name, widths) in enumerate(zip(self.stages, REFERENCE_CONFIGS[depth])):
            pool = 0 < i < 4 or (i == 4 and image_size == 64)
            setattr(self, name, VGGBlock(cin, widths, pool))
            cin = widths[-1]
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # as the reference: He-normal (fan-out) convs, zero biases, N(0, 0.01) linear
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: pooling, ``fc``."""
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.head(x)


def reference_vgg(depth: int) -> Callable[[int, int, int], ReferenceVGG]:
    return lambda num_classes, in_channels, image_size: ReferenceVGG(depth, num_classes, in_channels, image_size)
