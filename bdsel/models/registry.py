"""Models by name: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bdsel.models.base import Classifier
from bdsel.registry import Registry

MODELS: Registry[Callable[..., Classifier]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Register ``build(*, n_classes, in_channels=3, weights=None) -> Classifier``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(
    name: str, *, n_classes: int, in_channels: int = 3, weights: str | None = None
) -> Classifier:
    """A fresh model by registry name; ``weights`` is a local backbone state-dict file.

    Convolution weights are laid out channels-last: oneDNN (CPU) and cuDNN then run the
    convolutions, pooling and batch-norm in NHWC, about twice as fast as NCHW for the small
    CNN on CPU (benchmarks/bench_step.py). Inputs may stay NCHW; outputs are the same.
    """
    model = MODELS.get(name)(n_classes=n_classes, in_channels=in_channels, weights=weights)
    return model.to(memory_format=torch.channels_last)
