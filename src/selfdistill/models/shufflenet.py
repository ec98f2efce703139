"""ShuffleNet V1 and V2 for 32 x 32 inputs, as in the KD benchmark: RepDistiller's ``ShuffleV1``
(``models/ShuffleNetv1.py``) and ``ShuffleV2`` (``models/ShuffleNetv2.py``), HobbitLong/RepDistiller
commit eedab9d1450cafbc7afbb19f616be0ac08d8aa3b.

Both start with a 1x1 conv-BN-ReLU to 24 channels at full resolution (no stride, no max-pool, unlike
the ImageNet papers) and have three stages ``layer1``..``layer3`` that each halve the resolution; the
last stage's output is the reference's ``feat[-2]``. Layers keep the reference's names except the
classifier, ``fc`` where the reference has ``linear``. PyTorch's default initialisation, as there.

* ``ShuffleV1`` (Zhang et al., 2018; groups g = 3, widths 240/480/960, [4, 8, 4] units): a unit is a
  grouped 1x1 conv-BN-ReLU to a quarter of its width (ungrouped where its input is the 24-channel
  stem), a channel shuffle, a 3x3 depthwise conv-BN (ReLU'd here, as the reference does, unlike the
  paper), a grouped 1x1 conv-BN, then ReLU of the sum with the input or, for the first (stride-2) unit
  of a stage, of its concatenation with a 3x3 stride-2 average pool of the input.
* ``ShuffleV2`` (Ma et al., 2018; size 1x: widths 116/232/464, [3, 7, 3] basic units, 1024-channel
  1x1 conv-BN-ReLU ``conv2``/``bn2`` before pooling): each stage starts with a down-sampling unit
  (two stride-2 branches concatenated, then shuffled) followed by basic units (half of the channels
  pass, the other half go through 1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU; joined and
  shuffled). The reference's stages have one down-sampling unit plus ``n`` basic units, so [3, 7, 3]
  means 4, 8, 4 units.

The reference pools with a fixed 4 x 4 window; we pool adaptively, identical on 32 x 32, and run
28 x 28 as well.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> view [N, g, c, H, W] -> swap g and c -> [N, c*g, H, W]."""
    n, channels, h, w = x.shape
    return x.view(n, groups, channels // groups, h, w).transpose(1, 2).reshape(n, channels, h, w)


class ShuffleUnitV1(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        self.first_groups = 1 if cin == 24 else groups
        self.stride = stride
        # rectified / summed in place (see taps.py); the stride-2 unit rectifies a concatenation instead
        self.inplace_outputs = ("bn1", "bn2") if stride == 2 else ("bn1", "bn2", "bn3")
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x)), inplace=True), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1).relu_()
        out += x
        return out.relu_()


class ShuffleNetV1(nn.Module):
    stages = ("layer1", "layer2", "layer3")

    def __init__(self, widths: list[int], units: list[int], groups: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for name, width, n in zip(self.stages, widths, units):
            # the first unit of a stage concatenates its pooled input, so its branch makes width - cin channels
            blocks = [ShuffleUnitV1(cin, width - cin, 2, groups)]
            blocks += [ShuffleUnitV1(width, width, 1, groups) for _ in range(n - 1)]
            setattr(self, name, nn.Sequential(*blocks))
            cin = width
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: pooling, ``fc``."""
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(self.layer3(self.layer2(self.layer1(x))))


class BasicUnitV2(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(branch)))
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class DownUnitV2(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        # left branch: 3x3 depthwise stride-2 conv-BN, 1x1 conv-BN-ReLU
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 conv-BN-ReLU, 3x3 depthwise stride-2 conv-BN, 1x1 conv-BN-ReLU
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    stages = ("layer1", "layer2", "layer3")

    def __init__(self, widths: list[int], units: list[int], last: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for name, width, n in zip(self.stages, widths, units):
            setattr(self, name, nn.Sequential(DownUnitV2(cin, width), *(BasicUnitV2(width) for _ in range(n))))
            cin = width
        self.conv2 = nn.Conv2d(cin, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(last, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: 1x1 conv-BN-ReLU, pooling, ``fc``."""
        return self.fc(self.pool(F.relu(self.bn2(self.conv2(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(self.layer3(self.layer2(self.layer1(x))))


def shufflenet_v1(num_classes: int, in_channels: int, image_size: int) -> ShuffleNetV1:
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], 3, num_classes, in_channels)


def shufflenet_v2(num_classes: int, in_channels: int, image_size: int) -> ShuffleNetV2:
    return ShuffleNetV2([116, 232, 464], [3, 7, 3], 1024, num_classes, in_channels)
