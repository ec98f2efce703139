"""Small models for 28 x 28 images: an MLP and a three-stage CNN (fast on a CPU).

The MLP's options express Hinton et al. (2015)'s MNIST setting: a 784-1200-1200-10 teacher "strongly
regularized using dropout" (``hidden: [1200, 1200]``, ``dropout: 0.5``, ``input_dropout: 0.2``, the rates of
Hinton et al. (2012), which it cites; its max-norm weight constraint is not reproduced) on inputs jittered
by up to two pixels (``data.augment.crop_padding: 2``), and an unregularised 784-800-800-10 student
(``hidden: [800, 800]``); the temperature (20) is the KD method's option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import require
from .common import conv_bn_relu, init_weights
from .options import MAX_CHANNELS, MAX_LAYERS, MAX_UNITS, ModelOptions, check_rate


@dataclass
class MLPOptions(ModelOptions):
    hidden: list[int] = field(default_factory=lambda: [512, 256])  # the width of each hidden layer, in order
    dropout: float = 0.0  # on every hidden layer's activations (Hinton et al. 2012: 0.5)
    input_dropout: float = 0.0  # on the flattened input pixels (Hinton et al. 2012: 0.2)

    def check(self, where: str) -> None:
        require(1 <= len(self.hidden) <= MAX_LAYERS and all(1 <= h <= MAX_UNITS for h in self.hidden),
                f"{where}.hidden", self.hidden, f"a list of 1 to {MAX_LAYERS} widths in [1, {MAX_UNITS}]")
        check_rate(self.dropout, f"{where}.dropout")
        check_rate(self.input_dropout, f"{where}.input_dropout")


class MLP(nn.Module):
    """Hidden layers (Linear-ReLU) on the flattened image, then the linear classifier ``fc``.

    Stage ``layerI`` is the I-th hidden layer: ``Sequential(Flatten, Linear, ReLU)`` for the first,
    ``Sequential(Linear, ReLU)`` after it, with a ``Dropout`` appended where ``dropout > 0``, so the
    parameter keys (``layer1.1.weight``, ``layer2.0.weight``, ...) do not depend on the dropout rates.
    Input dropout is ``self.input_dropout`` (present only where the rate is above 0), applied before
    ``layer1``. Defaults: two hidden layers of 512 and 256 units, no dropout.
    """

    Options = MLPOptions

    def __init__(self, num_classes: int, in_channels: int, image_size: int, hidden: Sequence[int] = (512, 256),
                 dropout: float = 0.0, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.stages = tuple(f"layer{i + 1}" for i in range(len(hidden)))
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else None
        cin = in_channels * image_size ** 2
        for i, (name, width) in enumerate(zip(self.stages, hidden)):
            layers = [nn.Flatten()] if i == 0 else []
            layers += [nn.Linear(cin, width), nn.ReLU(True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            setattr(self, name, nn.Sequential(*layers))
            cin = width
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output (the last hidden layer's activations)."""
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_dropout is not None:
            x = self.input_dropout(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.head(x)


@dataclass
class CNNOptions(ModelOptions):
    width: int = 32  # channels of the first stage; the second and third have 2x and 4x

    def check(self, where: str) -> None:
        require(1 <= self.width <= MAX_CHANNELS, f"{where}.width", self.width, f"an integer in [1, {MAX_CHANNELS}]")


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (width w, 2w, 4w; 2x2 max-pool after the first two), global average
    pooling and a linear classifier. About 94k parameters at w=32."""

    Options = CNNOptions
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
