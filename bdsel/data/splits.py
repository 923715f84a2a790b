"""A run's view of a base dataset, derived deterministically from the config and seed.

Order of derivation: long-tail imbalance (subsampling classes of the base training set), then
a random permutation cut into the train subset, a disjoint hold-out subset and (optionally) a
disjoint validation subset, then label noise on the train subset only (the hold-out keeps
clean labels: it trains the IL model; the validation subset keeps them: it measures accuracy
for tuning). Adding a validation subset leaves the train and hold-out subsets unchanged.
Everything is keyed by the base set's global indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bdsel.config import DataConfig
from bdsel.data.sources import Dataset


@dataclass
class RunData:
    """What a run trains on. Label tensors cover all N base indices."""

    dataset: Dataset
    train_idx: torch.Tensor  # int64 [n_train] global indices, ascending
    holdout_idx: torch.Tensor  # int64 [n_holdout] global indices, ascending, disjoint
    validation_idx: torch.Tensor  # int64 [n_validation] global indices, ascending, disjoint
    observed: torch.Tensor  # int64 [N] labels as the learner sees them
    clean: torch.Tensor  # int64 [N] true labels
    noisy: torch.Tensor  # bool [N] observed != clean
    # data.clean: what cleaning dropped from the train subset (bdsel.cleaning); None: none
    cleaning: dict[str, Any] | None = None

    @property
    def base_noisy_frac(self) -> float:
        return float(self.noisy[self.train_idx].double().mean()) if len(self.train_idx) else 0.0


def long_tail_counts(class_counts: np.ndarray, ratio: float) -> np.ndarray:
    """Exponential decay: class c keeps n_max * ratio**(-c / (C - 1)), n_max = smallest class."""
    n_classes = len(class_counts)
    if ratio <= 1.0 or n_classes < 2:
        return class_counts.copy()
    n_max = int(class_counts.min())
    keep = np.floor(n_max * ratio ** (-np.arange(n_classes) / (n_classes - 1))).astype(np.int64)
    return np.maximum(keep, 1)


def inject_noise(
    labels: np.ndarray, n_classes: int, kind: str, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Exactly round(rate * n) points are corrupted (for ``uniform`` some redraw their label)."""
    out = labels.copy()
    bound = {"symmetric": (n_classes - 1) / n_classes, "pairflip": 0.5}.get(kind)
    if bound is not None and rate > bound + 1e-12:
        raise ValueError(
            f"data.noise.rate={rate:g} ({kind}, {n_classes} classes) is above {bound:.4g}: "
            "the observed label would then be some wrong class more often than the true one, "
            f"and no method can tell which is which; use a rate of at most {bound:.4g}"
        )
    n_noisy = int(round(rate * len(labels)))
    if kind == "none" or n_noisy == 0:
        return out
    chosen = rng.choice(len(labels), size=n_noisy, replace=False)
    if kind == "symmetric":
        out[chosen] = (labels[chosen] + rng.integers(1, n_classes, size=n_noisy)) % n_classes
    elif kind == "pairflip":
        out[chosen] = (labels[chosen] + 1) % n_classes
    elif kind == "uniform":
        out[chosen] = rng.integers(0, n_classes, size=n_noisy)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; valid: none, symmetric, pairflip, uniform")
    return out


def derive_run_data(
    dataset: Dataset, cfg: DataConfig, seed: int, holdout_fraction: float = 0.0
) -> RunData:
    """Splits, imbalance and noise for one run; the same inputs always give the same result.
    One permutation of the base training set gives the train subset from its start, the
    hold-out (``holdout_fraction``: ``Config.holdout_fraction``, the predictor's) after it and
    the validation split from its end, so that none of the three depends on another's size."""
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    rng = np.random.default_rng(split_seed)
    clean = dataset.train.labels.numpy().astype(np.int64)
    n_classes = dataset.n_classes

    pool = np.arange(len(clean))
    if cfg.imbalance.ratio > 1.0:
        counts = np.bincount(clean, minlength=n_classes)
        keep = long_tail_counts(counts, cfg.imbalance.ratio)
        pool = np.concatenate(
            [rng.permutation(np.flatnonzero(clean == c))[: keep[c]] for c in range(n_classes)]
        )
    pool = rng.permutation(pool)
    n_train = int(round(cfg.train_fraction * len(pool)))
    n_validation = int(round(cfg.validation_fraction * len(pool)))
    n_holdout = int(round(holdout_fraction * len(pool)))
    if n_train < 1:
        raise ValueError(f"data.train_fraction={cfg.train_fraction} leaves no training points")
    train_idx = np.sort(pool[:n_train])
    holdout_idx = np.sort(pool[n_train : n_train + n_holdout])
    validation_idx = np.sort(pool[len(pool) - n_validation :])

    observed = clean.copy()
    observed[train_idx] = inject_noise(
        clean[train_idx], n_classes, cfg.noise.kind, cfg.noise.rate, rng
    )
    return RunData(
        dataset=dataset,
        train_idx=torch.from_numpy(train_idx),
        holdout_idx=torch.from_numpy(holdout_idx),
        validation_idx=torch.from_numpy(validation_idx),
        observed=torch.from_numpy(observed),
        clean=torch.from_numpy(clean),
        noisy=torch.from_numpy(observed != clean),
    )
