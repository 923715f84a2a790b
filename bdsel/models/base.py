"""The contract every bdsel model keeps."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``forward(x) -> (logits [B, C], features [B, D])`` with ``logits = last_layer(features)``."""

    last_layer: nn.Linear

    @property
    def n_features(self) -> int:
        return self.last_layer.in_features

    @property
    def n_classes(self) -> int:
        return self.last_layer.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.last_layer(h), h
