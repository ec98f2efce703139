"""Small models for 28 x 28 images: an MLP and a three-stage CNN (fast on a CPU)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .common import conv_bn_relu, init_weights


class MLP(nn.Module):
    """Two hidden layers with ReLU on the flattened image."""

    stages = ("layer1", "layer2")

    def __init__(self, num_classes: int, in_channels: int, image_size: int, hidden: int = 512) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden), nn.ReLU(True))
        self.layer2 = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(True))
        self.fc = nn.Linear(hidden // 2, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output (the second hidden layer's activations)."""
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(x)))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (width w, 2w, 4w; 2x2 max-pool after the first two), global average
    pooling and a linear classifier. About 94k parameters at w=32."""

    stages = ("layer1", "layer2", "layer3")

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(conv_bn_relu(in_channels, width), nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))
        self.layer3 = conv_bn_relu(2 * width, 4 * width)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output: pooling, ``fc``."""
        return self.fc(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(x))))
