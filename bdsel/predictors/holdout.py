"""The ``holdout`` predictor: a bdsel model trained on the run's hold-out split.

This is RHO-LOSS's irreducible-loss model (trained on clean hold-out labels, never on a
training-subset index), and the offline stand-in for CLIP where no CLIP weights can be had.
Its spec records a hash of the hold-out indices, so that ``train`` can refuse a cache whose
model may have seen its training subset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from bdsel.config import Config, checks
from bdsel.data import RunData, int64_sha256, make_image_source
from bdsel.data.batching import ImageSource
from bdsel.evaluation import predict_logprobs
from bdsel.fit import EarlyStopping, FitSettings, fit_supervised
from bdsel.models import create_model
from bdsel.optim import build_optimizer
from bdsel.predictors.registry import register_predictor
from bdsel.rundir import atomic_write_bytes

CALIBRATION_SEED = 15_485_863  # the calibration split's stream, apart from the split's


@dataclass
class HoldoutSettings(FitSettings):
    """The ``holdout`` predictor: trained on the hold-out split's clean labels, scored for
    early stopping on a calibration split carved from the hold-out."""

    # The hold-out split: a share of the base training set, drawn after the train subset,
    # whose clean labels the model trains on; null: all that the train subset leaves.
    holdout_fraction: float | None = None
    calibration_fraction: float = 0.1  # of the hold-out: early stopping and the temperature
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "holdout_fraction": (lambda v: v is None or 0 < v < 1, "null or a fraction in (0, 1)"),
        "calibration_fraction": (checks.within(0, 1, low_open=True, high_open=True), "a fraction in (0, 1)"),
    }  # fmt: skip


def cache_stem(config: Config) -> str:
    """The hold-out split (seed, fractions, imbalance) and model name the cache depends on."""
    d, h = config.data, config.zeroshot.settings
    split_seed = config.seed if d.split_seed is None else d.split_seed
    stem = f"{d.name}-holdout-{h.model}-split{split_seed}-h{config.holdout_fraction:g}"
    return stem + (f"-lt{d.imbalance.ratio:g}" if d.imbalance.ratio > 1 else "")


def split_calibration(
    holdout_idx: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hold-out cut into the rows the model trains on and a calibration split (early
    stopping, temperature): two disjoint sorted int64 tensors whose union is ``holdout_idx``;
    the calibration split has round(fraction * n) rows, at least 1 (none of an empty hold-out)."""
    n = len(holdout_idx)
    n_cal = min(n, max(1, round(fraction * n))) if n else 0
    g = torch.Generator().manual_seed(seed * 1_000_003 + CALIBRATION_SEED)
    perm = holdout_idx.cpu()[torch.randperm(n, generator=g)]
    return perm[n_cal:].sort().values, perm[:n_cal].sort().values


def training_source(config: Config, data: RunData, device: torch.device) -> ImageSource:
    """The image source a predictor that trains bdsel models reads (augmented as the run's)."""
    return make_image_source(data.dataset, device, augment=config.data.augment)


def weights_sha256(state_dicts: list[dict[str, torch.Tensor]]) -> str:
    """Identifies trained weights: a partial cache resumes only with the same models."""
    h = hashlib.sha256()
    for state in state_dicts:
        for name, tensor in sorted(state.items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@register_predictor("holdout", cache_stem=cache_stem)
class HoldoutPredictor:
    """Trains on ``data.holdout_idx`` with clean labels, then predicts any row's log-probs."""

    Settings = HoldoutSettings  # zeroshot.* when zeroshot.predictor=holdout

    calibration_labels = "clean"  # the calibration split's: the plain temperature fit

    def __init__(self, config: Config, data: RunData, source: ImageSource) -> None:
        if len(data.holdout_idx) == 0:
            raise ValueError(
                "zeroshot.predictor=holdout needs a hold-out split: data.train_fraction=1 "
                "leaves none of the base training set"
            )
        overlap = set(data.holdout_idx.tolist()) & set(data.train_idx.tolist())
        if overlap:  # derive_run_data guarantees this; the IL model's validity depends on it
            raise AssertionError(f"hold-out and train subsets share {len(overlap)} indices")
        h = config.zeroshot.settings
        self.config, self.data, self.source = config, data, source
        self.dataset = data.dataset
        self.fit_rows, self.calibration_rows = split_calibration(
            data.holdout_idx, h.calibration_fraction, config.seed
        )
        torch.manual_seed(config.seed)
        self.model = create_model(
            h.model, n_classes=self.dataset.n_classes, in_channels=self.dataset.in_channels
        ).to(source.device)
        self.trained = False
        self.epochs_trained: int | None = None  # the kept (best) epoch
        self.calibration_accuracy: float | None = None

    @staticmethod
    def settings(config: Config) -> dict[str, Any]:
        """The settings that shape its outputs, as its spec names them."""
        settings = fit_settings("holdout", config, config.zeroshot.settings)
        del settings["holdout_fraction"]  # the split's: in the stem, and checked with the split
        return settings

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> HoldoutPredictor:
        return cls(config, data, training_source(config, data, device))

    @staticmethod
    def summary_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
        """What its spec says about its fit, as the CLI prints it."""
        rows = []
        if spec.get("calibration_accuracy") is not None:
            accuracy = f"{spec['calibration_accuracy']:.2%}"
            rows.append(("calibration accuracy (clean labels)", accuracy))
        if spec.get("epochs_trained") is not None:
            rows.append(("epochs (kept, by early stopping)", str(spec["epochs_trained"])))
        return rows

    def describe(self) -> str:
        """What ``cache-zeroshot`` says it is training."""
        h = self.config.zeroshot.settings
        n, n_cal = len(self.fit_rows), len(self.calibration_rows)
        stop = f", early stopping after {h.patience} epochs" if h.patience else ""
        return (
            f"the hold-out model ({h.model}, at most {h.epochs} epochs on {n} points{stop}; "
            f"{n_cal} calibration points)"
        )

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the train split and labels it never trained on, for the temperature:
        the calibration split and its clean labels."""
        return self.calibration_rows, self.data.clean[self.calibration_rows]

    def fit(self, progress: Any = None) -> None:
        h = self.config.zeroshot.settings
        bs = self.config.eval.batch_size
        rows = self.calibration_rows.to(self.source.device)
        labels = self.data.clean[self.calibration_rows].to(self.source.device)

        def accuracy(model: torch.nn.Module) -> float:
            logprobs = predict_logprobs(model, self.source, "train", rows, bs)
            return float((logprobs.argmax(1) == labels).float().mean())

        stop = EarlyStopping(accuracy, patience=h.patience)
        optimizer = build_optimizer(self.model, as_train_config(self.config, h))
        self.model = fit_supervised(
            self.model,
            self.source,
            self.fit_rows,
            self.data.clean,
            epochs=h.epochs,
            batch_size=h.batch_size,
            optimizer=optimizer,
            seed=self.config.seed + 7919,  # a stream of its own, apart from the main run's
            ema_decay=self.config.train.ema_decay,
            early_stopping=stop,
            schedule=h.schedule,
            progress=progress,
            description="hold-out model",
        )
        self.epochs_trained, self.calibration_accuracy = stop.best_epoch, stop.best_score
        self.trained = True

    def fit_or_load(self, weights: Path, progress: Any = None) -> None:
        """Train, or reload the weights an interrupted ``cache-zeroshot`` saved at ``weights``.

        Resuming a partial cache must continue with the very model that wrote its first rows;
        retraining is deterministic on one machine but not across devices or thread counts.
        """
        if weights.is_file():
            saved = torch.load(weights, map_location=self.source.device)
            self.model.load_state_dict(saved["model"])
            self.epochs_trained = saved["epochs_trained"]
            self.calibration_accuracy = saved["calibration_accuracy"]
            self.model.eval()
            self.trained = True
            return
        self.fit(progress)
        buf = io.BytesIO()
        torch.save(
            {
                "model": self.model.state_dict(),
                "epochs_trained": self.epochs_trained,
                "calibration_accuracy": self.calibration_accuracy,
            },
            buf,
        )
        atomic_write_bytes(weights, buf.getvalue())

    def weights_sha256(self) -> str:
        return weights_sha256([self.model.state_dict()])

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """log p(c | x) of the hold-out model for ``rows`` of ``split`` -> float32 [n, C], CPU."""
        if not self.trained:
            self.fit()
        bs = self.config.eval.batch_size
        return predict_logprobs(self.model, self.source, split, rows, bs).cpu()

    def spec(self) -> dict[str, Any]:
        d = self.config.data
        return {
            **self.settings(self.config),
            "seed": self.config.seed,
            "split_seed": self.config.seed if d.split_seed is None else d.split_seed,
            "train_fraction": d.train_fraction,
            "holdout_fraction": self.config.holdout_fraction,
            "imbalance_ratio": d.imbalance.ratio,
            "holdout_sha256": int64_sha256(self.data.holdout_idx),
            "epochs_trained": self.epochs_trained,
            "calibration_accuracy": self.calibration_accuracy,
            # Identifies the trained weights: a partial cache resumes only with the same model.
            "weights_sha256": self.weights_sha256() if self.trained else None,
        }


def fit_settings(kind: str, config: Config, fit: FitSettings) -> dict[str, Any]:
    """A trained predictor's settings: its config section and the EMA decay it trains with."""
    return {"kind": kind, **dataclasses.asdict(fit), "ema_decay": config.train.ema_decay}


def as_train_config(config: Config, fit: FitSettings):
    """A predictor model's optimizer settings in the shape build_optimizer takes."""
    return dataclasses.replace(
        config.train, optimizer=fit.optimizer, lr=fit.lr, weight_decay=fit.weight_decay
    )
