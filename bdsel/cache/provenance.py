"""Where a trained predictor's cache came from: the split and observed labels its models
trained on, checked against a run's before any of its log-probs is read (a model that trained
on the rows it predicts would make them look learnt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bdsel.cache.format import CacheError
from bdsel.config import Config
from bdsel.data import RunData, int64_sha256

# The data settings a trained predictor's spec records (spec key -> config key), which decide
# its split and observed labels.
SPLIT_KEYS = {
    "split_seed": "data.split_seed",
    "train_fraction": "data.train_fraction",
    "holdout_fraction": "zeroshot.holdout_fraction",
    "noise": "data.noise",
    "imbalance_ratio": "data.imbalance.ratio",
}


def split_stem(config: Config) -> str:
    """The part of a cross-fitted predictor's cache name that its fitted rows decide: the
    split's seed and fractions, the noise, the run's seed and any imbalance."""
    d = config.data
    split_seed = config.seed if d.split_seed is None else d.split_seed
    stem = f"split{split_seed}-t{d.train_fraction:g}-{d.noise.kind}{d.noise.rate:g}-s{config.seed}"
    return stem + (f"-lt{d.imbalance.ratio:g}" if d.imbalance.ratio > 1 else "")


def fitted_rows(config: Config, data: RunData) -> dict[str, Any]:
    """What a cross-fitted predictor's spec records of the rows it fitted on (its models or
    probes, on the train subset's observed labels): the run's seed, the split's settings and
    hashes of the train subset and of its observed labels, which :func:`check_split` checks."""
    d, train_idx = config.data, data.train_idx
    return {
        "seed": config.seed,
        "split_seed": config.seed if d.split_seed is None else d.split_seed,
        "train_fraction": d.train_fraction,
        "noise": {"kind": d.noise.kind, "rate": d.noise.rate},
        "imbalance_ratio": d.imbalance.ratio,
        "train_sha256": int64_sha256(train_idx),
        "observed_sha256": int64_sha256(data.observed[train_idx]),
    }


def split_differences(spec: dict[str, Any], config: Config) -> str:
    """The data settings in which a cache's stored spec and ``config`` differ, each with both
    values (``data.noise: cache {...}, this run {...}``); for a spec that records none of
    them, the keys that could differ."""
    d = config.data
    current = {
        "split_seed": config.seed if d.split_seed is None else d.split_seed,
        "train_fraction": d.train_fraction,
        "holdout_fraction": config.holdout_fraction,
        "noise": {"kind": d.noise.kind, "rate": d.noise.rate},
        "imbalance_ratio": d.imbalance.ratio,
    }
    differ = [
        f"{SPLIT_KEYS[k]}: cache {spec[k]!r}, this run {current[k]!r}"
        for k in SPLIT_KEYS
        if k in spec and spec[k] != current[k]
    ]
    recorded = [SPLIT_KEYS[k] for k in SPLIT_KEYS if k in spec]
    return "; ".join(differ) or (
        f"{', '.join(recorded)} are the same: the dataset's order or labels differ"
        if recorded
        else " / ".join(SPLIT_KEYS.values()) + " differ"
    )


def check_split(path: Path, spec: dict[str, Any], config: Config, data: RunData) -> None:
    """A trained predictor's cache must come from this run's split: the hold-out model from
    its hold-out subset, the cross-fitted models from its train subset and observed labels
    (else they may have trained on the rows they predict). CacheError naming what differs."""
    if spec.get("kind") == "holdout" and spec.get("holdout_sha256") != int64_sha256(
        data.holdout_idx
    ):
        raise CacheError(
            f"{path} was made by a hold-out model trained on another hold-out split than this "
            f"run's ({split_differences(spec, config)}): it may have seen this run's training "
            "points. Re-run bdsel cache-zeroshot"
        )
    if "train_sha256" in spec and (  # cross-fitted: the crossfit models, the probe
        spec.get("train_sha256") != int64_sha256(data.train_idx)
        or spec.get("observed_sha256") != int64_sha256(data.observed[data.train_idx])
    ):
        raise CacheError(
            f"{path} was made by cross-fitted models on another training subset or other "
            f"observed labels than this run's ({split_differences(spec, config)}): its models "
            "may have seen the rows they predict. Re-run bdsel cache-zeroshot"
        )
