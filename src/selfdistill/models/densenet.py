"""DenseNet-BC (Huang et al., 2017) for small images, as in the DLB code's ``densenetd*k*`` models.

Depth d gives three dense blocks of n = (d - 4) / 6 bottleneck layers (BN-ReLU-1x1 conv to 4k
channels, BN-ReLU-3x3 conv to k channels, concatenated), growth rate k, transitions that halve the
channels (compression 0.5) and the resolution, a 2k-channel 3x3 stem, and BN-ReLU before pooling.
Stages ``layer1``..``layer3`` are the dense blocks (with their transitions for the first two).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import init_weights


class Bottleneck(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, out], 1)


def transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNetBC(nn.Module):
    stages = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, growth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = 2 * growth
        self.stem = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        for i, name in enumerate(self.stages):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers.append(Bottleneck(channels, growth))
                channels += growth
            if i < len(self.stages) - 1:
                layers.append(transition(channels, channels // 2))
                channels //= 2
            setattr(self, name, nn.Sequential(*layers))
        self.pool = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: BN-ReLU, pooling, ``fc``."""
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def densenet_bc(depth: int, growth: int) -> Callable[[int, int, int], DenseNetBC]:
    return lambda num_classes, in_channels, image_size: DenseNetBC(depth, growth, num_classes, in_channels)
