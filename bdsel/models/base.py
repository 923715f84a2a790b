"""The contract every bdsel model keeps."""

from __future__ import annotations

from pathlib import Path

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


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load a state dict from ``path`` into everything but the classification head.

    Keys of the file's own head (``heads.*``, ``fc.*``, ``last_layer.*``) are dropped, since the
    number of classes differs; any other missing or unexpected key is an error.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model.weights: {file} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    head = ("heads.", "fc.", "last_layer.")
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    target = model.backbone if hasattr(model, "backbone") else model
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(
            f"model.weights {file}: does not fit the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
