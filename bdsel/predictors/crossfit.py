"""The ``crossfit`` predictor: a stand-in for CLIP that needs no clean labels.

The paper's point is that no clean hold-out set is needed. Offline there is no CLIP, so this
is the next best thing that needs none: K models cross-fitted on the training subset's
observed labels, each predicting the fold it never saw, by default through the noise channel
a first round estimates (the recipe: :mod:`bdsel.predictors.crossfit_fit`, which
:func:`bdsel.crossfit_models` runs on a user's own data). The rounds compared:
docs/results/holdout_free/.

Its spec records hashes of the training subset and its observed labels: ``train`` refuses
the cache for another subset or noise (its models may have seen rows they predict).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from bdsel.cache.provenance import fitted_rows, split_stem
from bdsel.config import Config
from bdsel.data import RunData
from bdsel.data.batching import ImageSource
from bdsel.models import create_model
from bdsel.optim import build_optimizer
from bdsel.predictors.crossfit_fit import CrossfitFit, CrossfitSettings
from bdsel.predictors.holdout import (
    as_train_config,
    fit_settings,
    training_source,
    weights_sha256,
)
from bdsel.predictors.registry import channel_rows, register_predictor
from bdsel.rundir import atomic_write_bytes


def cache_stem(config: Config) -> str:
    """Everything its outputs depend on: split, noise, folds and model."""
    c = config.zeroshot.settings
    return f"{config.data.name}-crossfit{c.folds}-{c.model}-{split_stem(config)}"


@register_predictor("crossfit", cache_stem=cache_stem)
class CrossfitPredictor:
    """K models, each trained on the observed labels of all folds but its own."""

    Settings = CrossfitSettings  # zeroshot.* when zeroshot.predictor=crossfit

    calibration_labels = "observed"  # noise included: the temperature is fitted with it
    out_of_fold = True  # no row predicted by a model that trained on it

    def __init__(self, config: Config, data: RunData, source: ImageSource) -> None:
        c = config.zeroshot.settings
        self.config, self.data = config, data
        ds = data.dataset

        def make_model() -> torch.nn.Module:
            return create_model(c.model, n_classes=ds.n_classes, in_channels=ds.in_channels)

        self.crossfit = CrossfitFit(
            make_model,
            lambda model: build_optimizer(model, as_train_config(config, c)),
            source,
            data.train_idx,
            data.observed,
            c,
            seed=config.seed,
            split_seed=config.seed if config.data.split_seed is None else config.data.split_seed,
            ema_decay=config.train.ema_decay,
            batch_size=config.eval.batch_size,
        )

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> CrossfitPredictor:
        return cls(config, data, training_source(config, data, device))

    @staticmethod
    def settings(config: Config) -> dict[str, Any]:
        """The settings that shape its outputs, as its spec names them: the channel round's
        only where there is one (``rounds`` > 1)."""
        settings = fit_settings("crossfit", config, config.zeroshot.settings)
        if settings["rounds"] == 1:
            del settings["channel_folds"], settings["channel_epochs"]
        return settings

    @staticmethod
    def summary_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
        """What its spec says about its fit, as the CLI prints it."""
        rows = []
        if spec.get("fold_accuracy"):
            accs = ", ".join(f"{a:.2%}" for a in spec["fold_accuracy"])
            rows.append(("held-out fold accuracy (observed labels)", accs))
            rows.append(("epochs per fold (kept)", ", ".join(map(str, spec["fold_epochs"]))))
        if spec.get("refit_skipped"):
            why = "the estimated noise channel leaves a class unidentifiable"
            return [*rows, ("refit round", f"skipped: {why}")]
        return rows + channel_rows(spec, "the anchor points' rate")

    def describe(self) -> str:
        c = self.config.zeroshot.settings
        n = len(self.data.train_idx)
        epochs = f"{'at most ' if c.patience else ''}{c.epochs} epochs each"
        if c.schedule == "cosine":
            epochs += ", cosine learning rate"
        refit = ""
        if c.rounds > 1:
            first = f"{c.channel_folds} of them" if c.channel_folds < c.folds else "all of them"
            refit = (
                f"; the first round trains {first} for {c.channel_epochs} epochs, only to "
                "estimate the noise channel (anchor points, or their symmetric projection); "
                f"then {c.rounds - 1} more round{'s' if c.rounds > 2 else ''} of them afresh "
                "on every point, through it"
            )
        return (
            f"{c.folds} cross-fitted models ({c.model}, {epochs}, on "
            f"{c.folds - 1}/{c.folds} of {n} training points with their observed labels{refit})"
        )

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and labels for the temperature: the training subset's observed labels, each
        predicted by the model that never saw it (p_zs becomes a calibrated probability that
        the observed label is right)."""
        return self.data.train_idx, self.data.observed[self.data.train_idx]

    def fit(self, progress: Any = None) -> None:
        self.crossfit.fit(progress)

    def fit_or_load(self, weights: Path, progress: Any = None) -> None:
        """Train, or go on from the models an interrupted ``cache-zeroshot`` saved at
        ``weights`` (after its last round, or after an earlier one)."""
        if weights.is_file():
            self.crossfit.load_state_dict(
                torch.load(weights, map_location=self.crossfit.source.device)
            )
        self.crossfit.fit(progress, save=lambda: self._save(weights))

    def _save(self, weights: Path) -> None:
        buf = io.BytesIO()
        torch.save(self.crossfit.state_dict(), buf)
        atomic_write_bytes(weights, buf.getvalue())

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """Out-of-fold log p(c | x) for training rows, the K models' mean probability for any
        other row -> float32 [n, C] on the CPU."""
        return self.crossfit.logprobs(split, rows)

    def spec(self) -> dict[str, Any]:
        trained = self.crossfit.trained
        models = [m.state_dict() for m in self.crossfit.models]
        return {
            **self.settings(self.config),
            **fitted_rows(self.config, self.data),
            **self.crossfit.fit_spec(),
            "weights_sha256": weights_sha256(models) if trained else None,
        }
