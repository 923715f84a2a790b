"""Frozen features for the probe predictors: one pass over a dataset's images, no training.

- ``pixels`` (``probe``): the raw pixels, flattened (in-memory datasets: Fashion-MNIST,
  CIFAR). The offline default: nothing to download, and weak enough that the model it helps
  beats it.
- ``clip`` (``probe_clip``): open_clip's L2-normalised image embeddings (the architecture
  ``zeroshot.model`` and the weights ``zeroshot.pretrained``, loaded as the ``clip``
  predictor loads them), for a user who has weights.
- ``backbone`` (``probe_backbone``): the penultimate features of a bdsel model
  (``zeroshot.backbone``, e.g. ``resnet18_cifar`` or ``vit_b16``) with its backbone weights
  from a local file (``zeroshot.weights``), in eval mode.

Each returns float32 [n, D] on the CPU for rows of the "train" or "test" split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bdsel.config import Config
    from bdsel.data.sources import Dataset

FEATURES = ("pixels", "clip", "backbone")


def pixel_features(dataset: Dataset, split: str, rows: torch.Tensor) -> torch.Tensor:
    """Flattened pixels in [0, 1]: float32 [n, C*H*W]."""
    images = getattr(dataset, split).images
    if images is None:
        raise ValueError(
            f"zeroshot.predictor=probe reads the pixels of an in-memory dataset; {dataset.name} "
            "is read from image files: use zeroshot.predictor=probe_clip or probe_backbone"
        )
    return images[rows.cpu()].reshape(len(rows), -1).float() / 255.0


class FeatureExtractor:
    """One kind of frozen features (``FEATURES``) for one dataset, with the weights
    ``config.zeroshot`` names: ``extractor(split, rows)`` -> float32 [n, D] on the CPU,
    ``spec()`` what identifies them (stored in the cache's spec)."""

    def __init__(
        self, config: Config, dataset: Dataset, device: torch.device, kind: str = "pixels"
    ) -> None:
        if kind not in FEATURES:
            raise ValueError(f"features: expected one of {', '.join(FEATURES)}, got {kind!r}")
        self.kind, self.dataset, self.device = kind, dataset, device
        self.batch_size = config.eval.batch_size
        self._spec: dict[str, object] = {}  # what identifies the weights (features is a setting)
        self._encode = None
        if kind == "clip":
            self._encode = self._clip_encoder(config)
        elif kind == "backbone":
            self._encode = self._backbone_encoder(config)

    def spec(self) -> dict[str, object]:
        return dict(self._spec)

    def __call__(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        if self._encode is None:
            return pixel_features(self.dataset, split, rows)
        out = [self._encode(split, chunk).float().cpu() for chunk in rows.split(self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, 0)

    def _clip_encoder(self, config: Config):
        from torch.nn import functional as F

        from bdsel.predictors.clip import ClipPredictor, clip_model_name
        from bdsel.predictors.prompts import prompts_for

        ds = self.dataset
        model, pretrained = config.zeroshot.settings.model, config.zeroshot.settings.pretrained
        class_names, templates = prompts_for(ds.name, ds.class_names, None)  # images only
        clip = ClipPredictor(clip_model_name(model), pretrained, class_names, templates,
                             device=self.device, batch_size=self.batch_size)  # fmt: skip
        self._spec |= {"model": clip.model_name, "pretrained": clip.pretrained,
                       "checkpoint_sha256": clip.checkpoint_sha256}  # fmt: skip

        def encode(split: str, rows: torch.Tensor) -> torch.Tensor:
            pixels = clip._pixels(getattr(ds, split), rows)
            return F.normalize(clip.encode_images_raw(pixels).float(), dim=-1)

        return encode

    def _backbone_encoder(self, config: Config):
        from bdsel.data.batching import make_image_source
        from bdsel.models import create_model
        from bdsel.predictors.clip import file_sha256

        p, ds = config.zeroshot.settings, self.dataset
        if not p.backbone or not p.weights:
            raise ValueError(
                "zeroshot.predictor=probe_backbone needs zeroshot.backbone (a model name) "
                "and zeroshot.weights (its local backbone weights file)"
            )
        model = create_model(p.backbone, n_classes=ds.n_classes, in_channels=ds.in_channels,
                             weights=p.weights).to(self.device).eval()  # fmt: skip
        source = make_image_source(ds, self.device, augment=False)
        self._spec |= {"backbone": p.backbone, "weights_sha256": file_sha256(p.weights)}

        def encode(split: str, rows: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                _, x = next(iter(source.iter_batches(split, rows.to(self.device), len(rows))))
                return model.features(x)

        return encode
