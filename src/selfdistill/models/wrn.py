"""Wide ResNets (Zagoruyko & Komodakis, 2016): WRN-d-k with pre-activation blocks, d = 6n + 4.

Three stages of n blocks with 16k, 32k, 64k channels after a 16-channel stem, then BN-ReLU, pooling
and a linear head. Depth and widening factor are in the name; option ``dropout`` (default 0, none) is
the paper's dropout between the two convolutions of every block (it used 0.3 on CIFAR), placed as
RepDistiller's ``dropRate``. The DLB code's "wide_resnet20_8" is not a WRN but a bottleneck ResNet
([2, 2, 2] Bottlenecks, internal widths 128/256/512); depth 20 is not a valid WRN depth. We build
standard WRNs; WRN-16-8 is the one closest to it in depth and width.

These compute exactly what RepDistiller's ``models/wrn.py`` (HobbitLong/RepDistiller, commit
eedab9d1450cafbc7afbb19f616be0ac08d8aa3b) computes with dropout 0: its blocks also pre-activate, and
the activated input feeds both the 1x1 shortcut convolution and the residual branch where the width
changes. Its shortcut exists where the widths differ and ours where the widths or the stride differ,
which is the same set of blocks for every 6n+4 depth (a stride-2 block always doubles the width). So
RepDistiller's ``wrn_16_1``/``wrn_16_2``/``wrn_40_1``/``wrn_40_2`` are aliases of ours; only key names
differ (``stem``/``layerI.J``/``shortcut``/``pool.0`` for its ``conv1``/``blockI.layer.J``/
``convShortcut``/``bn1``), mapped in ``models/foreign.py``. Its fixed ``avg_pool2d(8)`` is our adaptive
pooling, identical on 32 x 32 inputs. The last stage's output (before the final BN-ReLU) is the
reference's ``feat[-2]``; :meth:`WideResNet.head` applies BN-ReLU, pooling and ``fc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import init_weights
from .options import ModelOptions, check_rate


class PreActBlock(nn.Module):
    inplace_outputs = ("bn1", "bn2", "conv2")  # rectified / summed in place (see taps.py)

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x), inplace=True)
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)), inplace=True)
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        out += shortcut
        return out


class WideResNet(nn.Module):
    stages = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        cin = 16
        for i, (name, width) in enumerate(zip(self.stages, widths)):
            blocks = [PreActBlock(cin if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1, dropout)
                      for j in range(n)]
            setattr(self, name, nn.Sequential(*blocks))
            cin = width
        self.pool = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: BN-ReLU, pooling, ``fc``."""
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


@dataclass
class WRNOptions(ModelOptions):
    dropout: float = 0.0  # between the two convolutions of every block (the paper: 0.3 on CIFAR)

    def check(self, where: str) -> None:
        check_rate(self.dropout, f"{where}.dropout")


def wrn(depth: int, widen: int) -> Callable[..., WideResNet]:
    def build(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes, in_channels, dropout)

    build.Options = WRNOptions
    return build
