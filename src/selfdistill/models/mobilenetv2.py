"""MobileNetV2 for 32 x 32 inputs, RepDistiller's ``MobileNetV2`` (``mobile_half``: expansion T = 6,
width multiplier 0.5; ``models/mobilenetv2.py``, HobbitLong/RepDistiller commit
b13aecc3ede5b073640a40a37187e5e3ec4f466b).

A 3x3 stride-2 conv-BN-ReLU stem (``conv1``), seven groups of inverted residuals (t, c, n, s) =
(1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2),
(T, 320, 1, 1) with the widths scaled by the multiplier, a 1x1 conv-BN-ReLU to 1280 channels
(``conv2``; the multiplier only widens it above 1), global average pooling and a linear layer. As in
the reference, every inverted residual has its 1x1 expansion conv, also where t = 1, and a residual
sum where the stride is 1 and the widths agree.

The reference takes its features after groups 1, 2, 4 and 6 (0-based); our stages ``layer1``..
``layer4`` are the groups up to each of those, ``layerS.P`` being group ``STAGE_GROUPS[S-1][P]``, so the
stage outputs are its ``feat[1..4]`` and the last one its ``feat[-2]``. :meth:`MobileNetV2.head` applies
``conv2``, pooling and ``fc`` (the reference's ``classifier.0``). The reference asserts a multiple of
32 as input size and pools with a fixed window; we pool adaptively, identical on 32 x 32, and run
28 x 28 as well. Options ``width_mult`` (0.5) and ``expansion`` (6) are the multiplier and T above;
other values no longer fit the published checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import require
from .common import conv_bn_relu
from .options import ModelOptions

SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1)]  # (expansion, channels, blocks, stride); None: use T
STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


class InvertedResidual(nn.Module):
    """1x1 expansion conv-BN-ReLU, 3x3 depthwise conv-BN-ReLU (with the stride), 1x1 projection conv-BN."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.inplace_outputs = ("conv",) if self.residual else ()  # the input is added to it in place (taps.py)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.residual:
            out += x
        return out


class MobileNetV2(nn.Module):
    stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, expansion: int, width: float, num_classes: int, in_channels: int) -> None:
        super().__init__()
        cin = int(32 * width)
        self.conv1 = conv_bn_relu(in_channels, cin, stride=2)
        groups = []
        for t, c, n, s in SETTINGS:
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expansion))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        for name, members in zip(self.stages, STAGE_GROUPS):
            setattr(self, name, nn.Sequential(*(groups[g] for g in members)))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv_bn_relu(cin, last, kernel=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(last, num_classes)
        for m in self.modules():  # as the reference: He-normal (fan-out) convs, N(0, 0.01) linear, zero bias
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: ``conv2``, pooling, ``fc``."""
        return self.fc(self.pool(self.conv2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.head(x)


@dataclass
class MobileNetV2Options(ModelOptions):
    width_mult: float = 0.5  # the width multiplier (the name's 0.5: RepDistiller's mobile_half)
    expansion: int = 6  # T, the expansion of every inverted residual after the first group

    def check(self, where: str) -> None:
        require(1 / 16 <= self.width_mult <= 4, f"{where}.width_mult", self.width_mult,
                "a number in [0.0625, 4] (the 16-channel group needs at least one channel)")
        require(1 <= self.expansion <= 16, f"{where}.expansion", self.expansion, "an integer in [1, 16]")


def mobilenetv2(expansion: int = 6, width: float = 0.5) -> Callable[..., MobileNetV2]:
    def build(num_classes: int, in_channels: int, image_size: int, width_mult: float = width,
              expansion: int = expansion) -> MobileNetV2:
        return MobileNetV2(expansion, width_mult, num_classes, in_channels)

    build.Options = MobileNetV2Options
    return build
