"""The ``holdout`` predictor: a bdsel model trained on the run's hold-out split.

This is RHO-LOSS's irreducible-loss model (trained on clean hold-out labels, never on a
training-subset index), and the offline stand-in for CLIP where no CLIP weights can be had.
Its spec records a hash of the hold-out indices, so that ``train`` can refuse a cache whose
model may have seen its training subset.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from bdsel.config import Config
from bdsel.data import RunData, int64_sha256, make_image_source
from bdsel.data.batching import ImageSource
from bdsel.engine import build_optimizer, fit_supervised, predict_logprobs
from bdsel.models import create_model
from bdsel.rundir import atomic_write_bytes
from bdsel.zeroshot.registry import register_predictor


def cache_stem(config: Config) -> str:
    """The hold-out split (seed, fractions, imbalance) and model name the cache depends on."""
    d, h = config.data, config.zeroshot.holdout
    split_seed = config.seed if d.split_seed is None else d.split_seed
    stem = f"{d.name}-holdout-{h.model}-split{split_seed}-h{d.holdout_fraction:g}"
    return stem + (f"-lt{d.imbalance.ratio:g}" if d.imbalance.ratio > 1 else "")


@register_predictor("holdout", section="zeroshot.holdout", cache_stem=cache_stem)
class HoldoutPredictor:
    """Trains on ``data.holdout_idx`` with clean labels, then predicts any row's log-probs."""

    def __init__(self, config: Config, data: RunData, source: ImageSource) -> None:
        if len(data.holdout_idx) == 0:
            raise ValueError(
                "zeroshot.predictor=holdout needs a hold-out split: set data.holdout_fraction > 0"
            )
        overlap = set(data.holdout_idx.tolist()) & set(data.train_idx.tolist())
        if overlap:  # derive_run_data guarantees this; the IL model's validity depends on it
            raise AssertionError(f"hold-out and train subsets share {len(overlap)} indices")
        h = config.zeroshot.holdout
        self.config, self.data, self.source = config, data, source
        self.dataset = data.dataset
        torch.manual_seed(config.seed)
        self.model = create_model(
            h.model, n_classes=self.dataset.n_classes, in_channels=self.dataset.in_channels
        ).to(source.device)
        self.trained = False

    @staticmethod
    def settings(config: Config) -> dict[str, Any]:
        """The settings that shape its outputs, as its spec names them."""
        h = config.zeroshot.holdout
        return {"kind": "holdout", "model": h.model, "epochs": h.epochs,
                "optimizer": h.optimizer, "lr": h.lr, "weight_decay": h.weight_decay,
                "batch_size": h.batch_size, "ema_decay": config.train.ema_decay}  # fmt: skip

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> HoldoutPredictor:
        source = make_image_source(
            data.dataset, device, augment=config.data.augment, num_workers=config.data.num_workers
        )
        return cls(config, data, source)

    def describe(self) -> str:
        """What ``cache-zeroshot`` says it is training."""
        h = self.config.zeroshot.holdout
        n = len(self.data.holdout_idx)
        return f"the hold-out model ({h.model}, {h.epochs} epochs on {n} points)"

    def fit(self, progress: Any = None) -> None:
        h = self.config.zeroshot.holdout
        optimizer = build_optimizer(self.model, _as_train_config(self.config))
        self.model = fit_supervised(
            self.model,
            self.source,
            self.data.holdout_idx,
            self.data.clean,
            epochs=h.epochs,
            batch_size=h.batch_size,
            optimizer=optimizer,
            seed=self.config.seed + 7919,  # a stream of its own, apart from the main run's
            ema_decay=self.config.train.ema_decay,
            progress=progress,
            description="hold-out model",
        )
        self.trained = True

    def fit_or_load(self, weights: Path, progress: Any = None) -> None:
        """Train, or reload the weights an interrupted ``cache-zeroshot`` saved at ``weights``.

        Resuming a partial cache must continue with the very model that wrote its first rows;
        retraining is deterministic on one machine but not across devices or thread counts.
        """
        if weights.is_file():
            self.model.load_state_dict(torch.load(weights, map_location=self.source.device))
            self.model.eval()
            self.trained = True
            return
        self.fit(progress)
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        atomic_write_bytes(weights, buf.getvalue())

    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """log p(c | x) of the hold-out model for ``rows`` of ``split`` -> float32 [n, C], CPU."""
        if not self.trained:
            self.fit()
        bs = self.config.zeroshot.batch_size
        return predict_logprobs(self.model, self.source, split, rows, bs).cpu()

    def spec(self) -> dict[str, Any]:
        h = self.config.zeroshot.holdout
        d = self.config.data
        return {
            "kind": "holdout",
            "model": h.model,
            "epochs": h.epochs,
            "optimizer": h.optimizer,
            "lr": h.lr,
            "weight_decay": h.weight_decay,
            "batch_size": h.batch_size,
            "ema_decay": self.config.train.ema_decay,
            "seed": self.config.seed,
            "split_seed": self.config.seed if d.split_seed is None else d.split_seed,
            "train_fraction": d.train_fraction,
            "holdout_fraction": d.holdout_fraction,
            "imbalance_ratio": d.imbalance.ratio,
            "holdout_sha256": int64_sha256(self.data.holdout_idx),
            # Identifies the trained weights: a partial cache resumes only with the same model.
            "weights_sha256": self.weights_sha256() if self.trained else None,
        }


def _as_train_config(config: Config):
    """The hold-out model's optimizer settings in the shape build_optimizer takes."""
    from dataclasses import replace

    h = config.zeroshot.holdout
    return replace(config.train, optimizer=h.optimizer, lr=h.lr, weight_decay=h.weight_decay)
