"""Auxiliary classifier heads that methods attach to intermediate features (training only).

Heads are sized from the feature shapes a probe forward reports (:func:`feature_shapes`), so they fit
any model, not only the widths an official repository hard-coded.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .taps import FeatureTaps


@torch.no_grad()
def feature_shapes(model: nn.Module, input_shape: tuple[int, int, int], paths: list[str]) -> dict[str, torch.Size]:
    """Shapes (without the batch dimension) of the tapped features for one input of ``input_shape``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with FeatureTaps(model, paths) as taps:
        model(torch.zeros(2, *input_shape, device=device))
        shapes = {p: taps[p].shape[1:] for p in paths}
    model.train(was_training)
    return shapes


class SepConv(nn.Module):
    """Two depthwise-separable 3x3 convolutions (the first with ``stride``), each followed by BN-ReLU,
    as in the SCAN/BYOT-journal/LightSKD heads."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.Conv2d(cin, cin, 1, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AttentionHead(nn.Module):
    """LightSKD's DRG adapter (``Istr_2``): a sigmoid spatial-channel mask from a strided SepConv,
    upsampled back, multiplies the feature; then SepConv C->2C->4C (stride 2 each), global pooling
    and a linear classifier. The official code upsamples by a factor 2 (bilinear, corners aligned);
    we resize to the feature's own size the same way, so odd sizes (7x7) work too."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(SepConv(channels, channels, 2), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.body = nn.Sequential(SepConv(channels, 2 * channels, 2), SepConv(2 * channels, 4 * channels, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.sigmoid(F.interpolate(self.attention(x), size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.fc(self.body(x * mask))


class BottleneckHead(nn.Module):
    """BYOT's (ICCV) shallow classifier: 1x1 conv to width/4, k x k conv with stride k (k brings the
    feature to the deepest stage's resolution), 1x1 conv to ``width`` (the deepest pooled feature's
    width), each with BN-ReLU; then global pooling and a linear classifier. Returns (logits, pooled
    feature) so the feature hint can compare it with the deepest one."""

    def __init__(self, channels: int, width: int, stride: int, num_classes: int) -> None:
        super().__init__()
        mid = max(width // 4, 1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, stride, stride, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.body(x)
        return self.fc(feature), feature
