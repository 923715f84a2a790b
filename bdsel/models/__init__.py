"""Backbones that return ``(logits, features)``, behind a name registry.

``features`` is the input of the last linear layer (``model.last_layer``), which the
last-layer Laplace posterior and the gradient-norm baselines need.
"""

from bdsel.models import cnn, resnet, vit  # noqa: F401  (registers the built-in models)
from bdsel.models.base import Classifier
from bdsel.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "Classifier", "create_model", "list_models", "register_model"]
