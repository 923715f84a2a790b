"""A small, fast CNN for CPU runs (the offline Fashion-MNIST demo, tests)."""

from __future__ import annotations

import torch
from torch import nn

from bdsel.models.base import Classifier, load_backbone_weights
from bdsel.models.registry import register_model


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(Classifier):
    """conv32 - pool - conv64 - pool - conv128 - global average pool - linear (about 95k weights)."""

    def __init__(self, n_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(in_channels, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.last_layer = nn.Linear(4 * width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model("small_cnn")
def small_cnn(*, n_classes: int, in_channels: int = 3, weights: str | None = None) -> SmallCNN:
    model = SmallCNN(n_classes, in_channels)
    if weights:
        load_backbone_weights(model, weights)
    return model
