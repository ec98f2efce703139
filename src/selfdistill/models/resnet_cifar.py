"""ResNets for small images.

* ``resnet{8,14,20,32,44,56,110}``: He et al. (2016) CIFAR ResNets, 6n+2 layers of BasicBlocks in three
  stages of 16/32/64 channels. Shortcuts that change shape use a 1x1 convolution + BN (option B, as in
  RepDistiller/CRD), not the paper's zero-padding option A.
* ``resnet8x4`` / ``resnet32x4``: the same with a 32-channel stem and 64/128/256-channel stages, as in
  the KD literature. Option ``width`` is this multiplier for every depth (1 for ``resnetN``, 4 for
  ``resnetNx4``): stages of 16/32/64 times ``width`` channels after a stem of max(16, 8 * width), which
  gives both forms; other widths are not in the literature.
* ``resnet18``: the ImageNet ResNet-18 layout (BasicBlocks [2, 2, 2, 2], 64-512 channels) with a 3x3
  stride-1 stem and no max-pool, the usual form for 32 x 32 inputs (RepDistiller's ``resnetv2.ResNet18``).

These compute exactly what RepDistiller's ``models/resnet.py`` (HobbitLong/RepDistiller, commit
eedab9d1450cafbc7afbb19f616be0ac08d8aa3b) computes for the same names: same layers, same parameter
shapes; only the key names differ (our ``stem.0``/``stem.1`` are its ``conv1``/``bn1``, our
``shortcut`` its ``downsample``), which ``models/foreign.py`` maps. Its fixed ``AvgPool2d(8)`` is our
adaptive pooling, identical on 32 x 32 inputs. The last stage's output is the reference's ``feat[-2]``
and ``fc``'s input its ``feat[-1]``. ``ResNet`` also takes the bottleneck block
(``resnet_bottleneck.py``).

The DLB code's ``resnet110`` is a *bottleneck* network ([12, 12, 12] Bottlenecks); ours is the standard
BasicBlock [18, 18, 18] ResNet-110. All models pool adaptively, so 28 x 28 inputs work unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import require
from .common import init_weights
from .options import MAX_MULTIPLIER, ModelOptions


class BasicBlock(nn.Module):
    expansion = 1
    inplace_outputs = ("bn1", "bn2")  # rectified / summed in place (see taps.py)

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return out.relu_()


class ResNet(nn.Module):
    """A stem conv, then one stage of ``block``s per entry of ``widths`` (each block's output has
    ``width * block.expansion`` channels), pooling and a linear head."""

    def __init__(self, blocks: list[int], widths: list[int], stem: int, num_classes: int, in_channels: int,
                 block: type[nn.Module] = BasicBlock) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        cin = stem
        self.stages = tuple(f"layer{i + 1}" for i in range(len(widths)))
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * block.expansion
            setattr(self, self.stages[i], nn.Sequential(*layers))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output."""
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.head(x)


@dataclass
class CifarResNetOptions(ModelOptions):
    width: int = 1  # multiplies the stage widths 16/32/64; the stem has max(16, 8 * width) channels

    def check(self, where: str) -> None:
        require(1 <= self.width <= MAX_MULTIPLIER, f"{where}.width", self.width,
                f"an integer in [1, {MAX_MULTIPLIER}]")


@functools.cache
def cifar_resnet_options(width: int) -> type[CifarResNetOptions]:
    """The options of the CIFAR ResNets whose name means width multiplier ``width`` (``resnet8x4``: 4)."""
    if width == 1:
        return CifarResNetOptions
    return dataclasses.make_dataclass(f"CifarResNetX{width}Options", [("width", int, width)],
                                      bases=(CifarResNetOptions,))


def cifar_resnet(depth: int, width_factor: int = 1) -> Callable[..., ResNet]:
    """The builder of the CIFAR ResNet of ``depth`` whose width multiplier defaults to ``width_factor``."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int, image_size: int, width: int = width_factor) -> ResNet:
        return ResNet([n] * 3, [16 * width, 32 * width, 64 * width], max(16, 8 * width), num_classes, in_channels)

    build.Options = cifar_resnet_options(width_factor)
    return build


def resnet18(num_classes: int, in_channels: int, image_size: int) -> ResNet:
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], 64, num_classes, in_channels)
