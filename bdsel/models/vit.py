"""torchvision ViT-B/16 with its backbone weights from a local file (no hub download)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vit_b_16

from bdsel.models.base import Classifier, load_backbone_weights
from bdsel.models.registry import register_model


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
