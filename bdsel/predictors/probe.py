"""The probe predictors: cross-fitted linear probes on frozen features, the cheap stand-in for
CLIP that needs no clean label. ``probe`` reads the raw pixels (the offline default),
``probe_clip`` open_clip's image embeddings, ``probe_backbone`` a frozen bdsel model's
penultimate features.

CLIP makes selection pay because it is free to the trainer: trained elsewhere, one inference
pass, and weaker than the model it helps. A linear probe on features that cost one pass (raw
pixels, CLIP's image embeddings, a frozen backbone's; bdsel.predictors.features) is that kind of
predictor: it costs seconds, not a training run. The training subset is cut into K folds and
probe k, fitted on the observed labels of every fold but k, predicts fold k, so no row is
predicted by a probe that was fitted on it; rows outside the subset (the test set, a hold-out)
get the mean of the K probes' probabilities.

A probe of noisy labels learns the noise, a pair flip entirely, and then believes a flipped
label. So the first round's out-of-fold probabilities estimate the noise channel (bdsel.data.noise_channel: anchor points where the off-diagonal
mass is concentrated, as a pair flip's is, else the symmetric channel of the rate fitted to
them), and a second round of K probes on the same folds learns the clean label through it
with the forward loss correction. Where the channel leaves a class unidentifiable, the first
round stands (``crossfit_probe(channel="none")`` keeps the first round for a library
user). The temperature is fitted when the cache is made, with the labels' noise
(``calibration_labels = "observed"``).

:func:`crossfit_probe` is the whole recipe on any feature tensor; the registered predictor
runs it on a run's training subset.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from bdsel.cache.provenance import fitted_rows, split_stem
from bdsel.calibration import fit_temperature_and_noise
from bdsel.config import Config, checks
from bdsel.data import RunData
from bdsel.data.noise_channel import anchor_transition, choose_channel, forward_loss, identifiable
from bdsel.predictors.clip import clip_weights_spec
from bdsel.predictors.features import FeatureExtractor
from bdsel.predictors.registry import channel_rows, register_predictor
from bdsel.rundir import atomic_write_bytes

Channel = Literal["auto", "none"]
FOLD_SEED = 7_368_787  # the folds' stream, apart from the split's and the crossfit folds'


@dataclass
class ProbeFit:
    """K linear probes on standardised features and what they say about their own rows.

    ``fold_of``: int64 [N], the fold of each fitted row (its predicting probe);
    ``weights``/``biases``: float32 [K, C, D] / [K, C]; ``mean``/``scale``: float32 [D], the
    standardisation; ``logprobs``: float32 [N, C], each row's out-of-fold log p(clean | x)
    (through ``transition`` where one was used; otherwise of the observed label);
    ``transition``: float64 [C, C] or None; ``channel``: "anchor", "symmetric" or None.
    """

    fold_of: torch.Tensor
    weights: torch.Tensor
    biases: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    logprobs: torch.Tensor
    transition: torch.Tensor | None = None
    channel: str | None = None

    @property
    def folds(self) -> int:
        return int(self.weights.shape[0])

    def per_probe(self, features: torch.Tensor) -> torch.Tensor:
        """Every probe's log-probs for ``features`` [n, D] -> float32 [K, n, C]."""
        x = (features.float() - self.mean) / self.scale
        logits = torch.einsum("nd,kcd->knc", x, self.weights) + self.biases[:, None, :]
        return torch.log_softmax(logits, dim=2)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Rows no probe was fitted on: the mean of the K probes' probabilities, as log-probs
        float32 [n, C]."""
        return torch.logsumexp(self.per_probe(features), dim=0) - math.log(self.folds)


def assign_probe_folds(n: int, folds: int, seed: int) -> torch.Tensor:
    """int64 [n]: a fold in 0..folds-1 for each of n rows, near-equal sizes, random order."""
    if folds < 2 or n < folds:
        raise ValueError(f"cross-fitting needs 2 <= folds <= rows, got {folds} folds of {n} rows")
    g = torch.Generator().manual_seed(seed * 1_000_003 + FOLD_SEED)
    fold_of = torch.empty(n, dtype=torch.int64)
    fold_of[torch.randperm(n, generator=g)] = torch.arange(n) % folds
    return fold_of


def fit_linear(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    transition: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by minibatch Adam from zero weights (deterministic for a
    seed): ``x`` float32 [n, D] standardised, ``labels`` int64 [n] -> (W [C, D], b [C]). With a
    ``transition`` [C, C] it learns the clean label through it (forward loss correction)."""
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    loss_fn = F.cross_entropy if transition is None else forward_loss(transition)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            loss = loss_fn(x[idx] @ w.T + b, labels[idx]) + 0.5 * weight_decay * w.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return w.detach(), b.detach()


# The probes' optimiser, fixed: minibatch Adam at lr 3e-3 with L2 1e-3 on the weights, batches
# of 256, from zero weights on standardised features (experiments/probe_quality.py measured it;
# results: docs/results/end_to_end/probe_quality.md). A cache's spec records them. The library
# function below keeps its own defaults (lr 0.01, L2 1e-4), which the examples use.
RECIPE = {"lr": 3e-3, "weight_decay": 1e-3, "batch_size": 256, "channel": "auto"}


def crossfit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    folds: int = 2,
    epochs: int = 5,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    channel: Channel = "auto",
    seed: int = 0,
) -> ProbeFit:
    """Cross-fitted linear probes of ``labels`` (int64 [N], observed, possibly noisy) on
    ``features`` (float [N, D]): returns a :class:`ProbeFit` whose ``logprobs`` row i comes from
    the one probe that was not fitted on row i. With ``channel="auto"`` a second round learns
    the clean label through the noise channel the first round's out-of-fold probabilities
    estimate (module docstring); ``"none"``: one round, the observed label."""
    features, labels = _check_inputs(features, labels, n_classes)
    if channel not in ("auto", "none"):
        raise ValueError(f"channel must be 'auto' or 'none', got {channel!r}")
    fold_of = assign_probe_folds(len(labels), folds, seed)
    mean = features.mean(0)
    scale = features.std(0).clamp_min(1e-6)  # constant pixels (a border) stay 0, not NaN
    x = (features - mean) / scale
    settings = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size}
    fit = _fit_round(x, labels, n_classes, fold_of, seed, settings, None)
    fit.mean, fit.scale = mean, scale
    if channel == "none":
        return fit
    rate = fit_temperature_and_noise(fit.logprobs, labels)[1]
    kind, transition = choose_channel(anchor_transition(fit.logprobs.double().exp()), rate)
    if not identifiable(transition):
        return fit  # the clean label cannot be told through it: the first round stands
    refit = _fit_round(x, labels, n_classes, fold_of, seed + 1, settings, transition)
    refit.mean, refit.scale = mean, scale
    refit.transition, refit.channel = transition, kind
    return refit


def _check_inputs(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [N, D] features and int64 [N] labels in 0..C-1, on the CPU; a ValueError naming
    the argument otherwise."""
    if features.ndim != 2:
        raise ValueError(f"features: expected [N, D], got shape {tuple(features.shape)}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(
            f"labels: expected [N] with N = {len(features)} (the features' rows), got shape "
            f"{tuple(labels.shape)}"
        )
    features = features.detach().float().cpu()
    if not torch.isfinite(features).all():
        raise ValueError("features: holds NaN or Inf values")
    labels = labels.detach().cpu().long()
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels: expected classes in 0..{n_classes - 1}, got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    return features, labels


def _fit_round(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    fold_of: torch.Tensor,
    seed: int,
    settings: dict[str, Any],
    transition: torch.Tensor | None,
) -> ProbeFit:
    """K probes, probe k fitted on the rows of every fold but k; each row's log-probs from its
    own fold's probe."""
    folds = int(fold_of.max()) + 1
    weights, biases = [], []
    logprobs = torch.empty(len(x), n_classes)
    for k in range(folds):
        fit_rows = fold_of != k
        w, b = fit_linear(x[fit_rows], labels[fit_rows], n_classes, seed=seed * 31 + k,
                          transition=transition, **settings)  # fmt: skip
        held = ~fit_rows
        logprobs[held] = torch.log_softmax(x[held] @ w.T + b, dim=1)
        weights.append(w)
        biases.append(b)
    d = x.shape[1]
    return ProbeFit(fold_of, torch.stack(weights), torch.stack(biases), torch.zeros(d),
                    torch.ones(d), logprobs)  # fmt: skip


# ----------------------------------------------------------------------------- the predictor


@dataclass
class ProbeSettings:
    """The ``probe`` predictor (the offline default): K linear probes on the raw pixels of an
    in-memory dataset, each fitted on the observed labels of all folds of the training subset
    but one and predicting it, then again through the noise channel their out-of-fold
    probabilities estimate; no clean label, one pass over the images (docs/predictors.md)."""

    folds: int = 2  # K probes, each predicting its own fold
    epochs: int = 5  # passes of minibatch Adam (bdsel.predictors.probe.RECIPE), from zero
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "folds": (checks.at_least(2), "an int >= 2"),
        "epochs": checks.POSITIVE_INT_RULE,
    }  # fmt: skip

    def weights_spec(self) -> dict[str, Any]:
        """How the cache's spec names the weights of the features (none for the pixels)."""
        return {}


@dataclass
class ClipProbeSettings(ProbeSettings):
    """``probe_clip``: the probe on open_clip's L2-normalised image embeddings, the weights
    loaded as the ``clip`` predictor loads them: for a user who has CLIP weights."""

    model: str = "RN50"  # an open_clip architecture name, or a JSON architecture file
    pretrained: str = "openai"  # a pretrained tag (needs internet) or a local checkpoint

    def weights_spec(self) -> dict[str, Any]:
        return clip_weights_spec(self.model, self.pretrained) | {"precision": "fp32"}


@dataclass
class BackboneProbeSettings(ProbeSettings):
    """``probe_backbone``: the probe on a bdsel model's penultimate features, in eval mode,
    with its backbone weights from a local file."""

    backbone: str | None = None  # a registered model name (bdsel.models.list_models)
    weights: str | None = None  # its local backbone weights file

    def weights_spec(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "weights": Path(self.weights).name if self.weights else None,
        }


def _cache_stem(features: str):
    def cache_stem(config: Config) -> str:
        """Everything its outputs depend on: split, noise, features and folds."""
        folds = config.zeroshot.settings.folds
        return f"{config.data.name}-probe{folds}-{features}-{split_stem(config)}"

    return cache_stem


@register_predictor("probe", cache_stem=_cache_stem("pixels"))
class ProbePredictor:
    """:func:`crossfit_probe` on a run's training subset, over frozen features
    (bdsel.predictors.features; ``features`` names which): out-of-fold log-probs for its
    rows, the probes' mean for any other row."""

    Settings = ProbeSettings  # zeroshot.* when zeroshot.predictor=probe
    features = "pixels"

    calibration_labels = "observed"  # noise included: the temperature is fitted with it
    out_of_fold = True  # no row predicted by a probe fitted on it

    def __init__(self, config: Config, data: RunData, extractor: FeatureExtractor) -> None:
        self.config, self.data, self.extractor = config, data, extractor
        n_rows = len(data.dataset.train.labels)
        self.position = torch.full((n_rows,), -1, dtype=torch.int64)  # -1: not in the subset
        self.position[data.train_idx.cpu()] = torch.arange(len(data.train_idx))
        self.fit_: ProbeFit | None = None

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> ProbePredictor:
        return cls(config, data, FeatureExtractor(config, data.dataset, device, cls.features))

    @classmethod
    def settings(cls, config: Config) -> dict[str, Any]:
        """The settings that shape its outputs, as its spec names them."""
        p = config.zeroshot.settings
        return {"kind": cls.name, "features": cls.features, "folds": p.folds, "epochs": p.epochs,
                **RECIPE, **p.weights_spec()}  # fmt: skip

    @staticmethod
    def summary_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
        """What its spec says about its fit, as the CLI prints it."""
        return channel_rows(spec, "the fitted rate")

    def describe(self) -> str:
        p = self.config.zeroshot.settings
        return (
            f"{p.folds} cross-fitted linear probes on {self.features} features ({p.epochs} "
            f"epochs each, on {p.folds - 1}/{p.folds} of {len(self.data.train_idx)} training "
            "points with their observed labels, then again through the noise channel their "
            "out-of-fold probabilities estimate)"
        )

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training subset's observed labels, each row predicted by the probe that was not
        fitted on it."""
        return self.data.train_idx, self.data.observed[self.data.train_idx]

    def fit(self, progress: Any = None) -> None:
        p, rows = self.config.zeroshot.settings, self.data.train_idx.cpu()
        task = None
        if progress is not None:
            task = progress.add_task(f"probe features ({self.features})", total=1)
        features = self.extractor("train", rows)
        self.fit_ = crossfit_probe(
            features, self.data.observed[rows], self.data.dataset.n_classes, folds=p.folds,
            epochs=p.epochs, seed=self.config.seed, **RECIPE,
        )  # fmt: skip
        if task is not None:
            progress.update(task, completed=1)

    def fit_or_load(self, weights: Path, progress: Any = None) -> None:
        """Fit, or reload the probes an interrupted ``cache-zeroshot`` saved at ``weights``."""
        if weights.is_file():
            self.fit_ = ProbeFit(**torch.load(weights))
            return
        self.fit(progress)
        buf = io.BytesIO()
        torch.save(dataclasses.asdict(self.fit_), buf)
        atomic_write_bytes(weights, buf.getvalue())

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """Out-of-fold log p(c | x) for training-subset rows, the probes' mean for any other
        row -> float32 [n, C] on the CPU."""
        if self.fit_ is None:
            self.fit()
        rows = rows.cpu()
        position = self.position[rows] if split == "train" else torch.full_like(rows, -1)
        out = torch.empty(len(rows), self.data.dataset.n_classes)
        inside = position >= 0
        out[inside] = self.fit_.logprobs[position[inside]]
        if (~inside).any():
            out[~inside] = self.fit_.predict(self.extractor(split, rows[~inside]))
        return out

    def spec(self) -> dict[str, Any]:
        fit = self.fit_
        return {
            **self.settings(self.config),
            **self.extractor.spec(),
            **fitted_rows(self.config, self.data),
            # Fit results: None (matches any stored value) until the probes are fitted.
            "refit_channel": None if fit is None else fit.channel,
            "refit_noise": None
            if fit is None or fit.transition is None
            else round(float(1 - fit.transition.diagonal().mean()), 6),
        }


@register_predictor("probe_clip", cache_stem=_cache_stem("clip"))
class ClipProbePredictor(ProbePredictor):
    """The probe on open_clip's image embeddings (bdsel.predictors.features)."""

    Settings = ClipProbeSettings  # zeroshot.* when zeroshot.predictor=probe_clip
    features = "clip"


@register_predictor("probe_backbone", cache_stem=_cache_stem("backbone"))
class BackboneProbePredictor(ProbePredictor):
    """The probe on a frozen bdsel backbone's penultimate features (bdsel.predictors.features)."""

    Settings = BackboneProbeSettings  # zeroshot.* when zeroshot.predictor=probe_backbone
    features = "backbone"
