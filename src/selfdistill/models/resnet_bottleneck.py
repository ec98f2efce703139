"""ResNet-50 for 32 x 32 inputs, RepDistiller's ``ResNet50`` (``models/resnetv2.py``,
HobbitLong/RepDistiller commit eedab9d1450cafbc7afbb19f616be0ac08d8aa3b).

The ImageNet ResNet-50 layout ([3, 4, 6, 3] bottlenecks of 64/128/256/512 planes, 4x expansion, 2048
features) with a 3x3 stride-1 64-channel stem and no max-pool. The stride of a down-sampling
bottleneck sits on its 3x3 convolution; shortcuts that change shape are a 1x1 convolution + BN. Built
by :class:`resnet_cifar.ResNet` with :class:`Bottleneck`, so its keys are ``stem.0``/``stem.1`` where
the reference has ``conv1``/``bn1`` and ``fc`` where it has ``linear`` (``models/foreign.py`` maps them).
The last stage (``layer4``) gives the reference's ``feat[-2]``, ``fc``'s input its ``feat[-1]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet_cifar import ResNet


class Bottleneck(nn.Module):
    """1x1 conv to ``planes``, 3x3 conv (with the stride), 1x1 conv to ``4 * planes``, each with BN, ReLU
    after the first two and after the residual sum."""

    expansion = 4
    inplace_outputs = ("bn1", "bn2", "bn3")  # rectified / summed in place (see taps.py)

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return out.relu_()


def resnet50_cifar(num_classes: int, in_channels: int, image_size: int) -> ResNet:
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], 64, num_classes, in_channels, block=Bottleneck)
