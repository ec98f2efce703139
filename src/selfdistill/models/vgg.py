"""VGG-16 and VGG-19 with batch normalisation, for 32 x 32 inputs.

As in the DLB code: the convolutional part of Simonyan & Zisserman's VGG with BN after every
convolution, then a 512-512-C classifier with ReLU and no dropout. The five pooling steps need inputs
of at least 32 x 32 (use ``data.pad_to: 32`` for 28 x 28 datasets). Stages ``layer1``..``layer5``
are the five pooled blocks.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..errors import UserError
from .common import conv_bn_relu, init_weights

CONFIGS = {16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}
WIDTHS = [64, 128, 256, 512, 512]


class VGG(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(self.classifier(self.pool(x)))


def vgg(depth: int) -> Callable[[int, int, int], VGG]:
    return lambda num_classes, in_channels, image_size: VGG(depth, num_classes, in_channels, image_size)
