"""torchvision ViT-B/16 with its backbone weights from a local file (no hub download)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vit_b_16

from bdsel.models import register_model
from bdsel.models.base import Classifier


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


class ViTB16(Classifier):
    image_size = 224

    def __init__(self, n_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.backbone = vit_b_16(weights=None)
        self.backbone.heads = nn.Identity()
        self.in_channels = in_channels
        self.last_layer = nn.Linear(self.backbone.hidden_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            # Small images (CIFAR) are upsampled to the resolution the backbone was trained at.
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear")
        return self.backbone(x)  # heads = Identity: the class token after the final norm


@register_model("vit_b16")
def vit_b16(*, n_classes: int, in_channels: int = 3, weights: str | None = None) -> ViTB16:
    model = ViTB16(n_classes, in_channels)
    if weights:
        load_backbone_weights(model, weights)
    return model
