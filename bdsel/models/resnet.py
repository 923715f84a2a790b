"""ResNet-18 variants: the CIFAR stem (3x3 stride 1) and the 7x7 stem, both without max-pool."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from bdsel.models.base import Classifier, load_backbone_weights
from bdsel.models.registry import register_model


class ResNet18(Classifier):
    def __init__(self, n_classes: int, in_channels: int, stem: str) -> None:
        super().__init__()
        net = resnet18(weights=None, num_classes=n_classes)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # torchvision's attribute names, so that its state dicts load (the head is last_layer).
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.last_layer = net.fc  # both variants in the paper drop the max-pool: none here

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _build(stem: str, n_classes: int, in_channels: int, weights: str | None) -> ResNet18:
    model = ResNet18(n_classes, in_channels, stem)
    if weights:
        load_backbone_weights(model, weights)
    return model


@register_model("resnet18_cifar")
def resnet18_cifar(*, n_classes: int, in_channels: int = 3, weights: str | None = None) -> ResNet18:
    return _build("cifar", n_classes, in_channels, weights)


@register_model("resnet18")
def resnet18_7x7(*, n_classes: int, in_channels: int = 3, weights: str | None = None) -> ResNet18:
    return _build("imagenet", n_classes, in_channels, weights)
