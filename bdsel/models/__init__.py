"""Backbones that return ``(logits, features)``, behind a name registry.

``features`` is the input of the last linear layer (``model.last_layer``), which the
last-layer Laplace posterior and the gradient-norm baselines need.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bdsel.models.base import Classifier

_REGISTRY: dict[str, Callable[..., Classifier]] = {}


def register_model(name: str) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    def deco(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(
    name: str, *, n_classes: int, in_channels: int = 3, weights: str | None = None
) -> Classifier:
    """A fresh model by registry name; ``weights`` is a local backbone state-dict file.

    Convolution weights are laid out channels-last: oneDNN (CPU) and cuDNN then run the
    convolutions, pooling and batch-norm in NHWC, about twice as fast as NCHW for the small
    CNN on CPU (benchmarks/bench_step.py). Inputs may stay NCHW; outputs are the same.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    model = _REGISTRY[name](n_classes=n_classes, in_channels=in_channels, weights=weights)
    return model.to(memory_format=torch.channels_last)


from bdsel.models import cnn, resnet, vit  # noqa: E402,F401  (registers the built-in models)

__all__ = ["Classifier", "create_model", "list_models", "register_model", "nn"]
