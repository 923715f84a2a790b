"""The crossfit recipe on any image source, apart from bdsel's Config: what the ``crossfit``
predictor (``bdsel cache-zeroshot``) and :func:`bdsel.crossfit_models` (a user's own data
and model) both run.

The rows are split into K folds; model k trains on the observed (possibly noisy) labels of
every fold but k, with the weight EMA, and predicts fold k: no row is predicted by a model
that saw it. Other rows get the mean of the K models' probabilities.

Models trained on noisy labels learn the noise (a pairflip channel entirely), so by default
(``rounds: 2``) a first round only estimates the noise channel: it trains the models of the
first ``channel_folds`` folds for ``channel_epochs``, and their out-of-fold probabilities give
the channel's anchor-point estimate (bdsel.data.noise_channel), or, where its rows spread
their off-diagonal mass as symmetric noise does, the symmetric channel of its rate (the
anchor matrix then carries the model's own confusions too). A second round trains K fresh
models on the same folds, each on the other folds' rows through that channel, with the
forward loss correction: they learn the clean label, and so are as sure as a model of clean
labels that a mislabeled point is wrong. Where the channel leaves a class unidentifiable (its
diagonal does not dominate), the refit is skipped and the first round stands, its missing
folds' models trained as it would have. What model k trains on depends on fold k's labels
only through the first round's models, which never saw them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdsel.config import ConfigError, TrainConfig, check_ranges, checks
from bdsel.data.batching import DatasetImages, ImageSource
from bdsel.data.noise_channel import (
    anchor_transition,
    choose_channel,
    forward_loss,
    identifiable,
    off_diagonal_concentration,
)
from bdsel.evaluation import predict_logprobs
from bdsel.fit import EarlyStopping, FitSettings, fit_supervised
from bdsel.optim import build_optimizer
from bdsel.predictors.any_dataset import checked_labels
from bdsel.runtime import step_progress

FOLD_SEED = 104_729  # the fold assignment's stream, apart from the split's and the models'


@dataclass
class CrossfitSettings(FitSettings):
    """The ``crossfit`` predictor: K models, each trained on the observed labels of all folds
    of the training subset but one (early stopping on that one's) and predicting it; by
    default they train for the clean label through the noise channel that a first round's
    out-of-fold probabilities estimate; no clean labels needed (docs/predictors.md). A fixed
    budget with a cosine rate instead of a fit to the plateau, which noisy labels reach only
    after many epochs (the budget's measurements: docs/results/offline/predictor_budget.md,
    docs/results/holdout_free/crossfit_recipe.md)."""

    folds: int = 2  # K: models, each predicting its own fold
    epochs: int = 18  # a fixed budget (patience 0)
    patience: int = 0  # 0: every epoch, the last kept
    lr: float = 0.01  # peak of the cosine schedule
    schedule: Literal["none", "cosine"] = "cosine"
    # 1: the K models of one round predict. 2 (the default): the first round only estimates
    # the noise channel, and a second round of K fresh models on the same folds (still no row
    # predicted by a model that trained on it) trains through it, with the forward loss
    # correction, for the clean label; skipped where that channel leaves a class
    # unidentifiable. More rounds: each estimates the channel again from the one before.
    rounds: int = 2
    # The channel round trains the models of the first ``channel_folds`` folds, for
    # ``channel_epochs`` each (the later rounds: every fold's, ``epochs``).
    channel_folds: int = 1
    channel_epochs: int = 8  # the channel round's epochs
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "folds": (checks.at_least(2), "an int >= 2"),
        "rounds": checks.POSITIVE_INT_RULE,
        "channel_folds": checks.POSITIVE_INT_RULE,
        "channel_epochs": checks.POSITIVE_INT_RULE,
    }  # fmt: skip

    def check(self, prefix: str = "") -> None:
        """The settings that only go together (ConfigError naming them under ``prefix``)."""
        if self.channel_folds > self.folds:
            raise ConfigError(
                f"{prefix}channel_folds ({self.channel_folds}) > {prefix}folds ({self.folds}): "
                "the channel round cannot train more fold models than there are folds"
            )


def assign_folds(train_idx: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """The training subset cut into ``folds`` disjoint folds of near-equal size: a list of
    int64 [n_k] sorted global indices whose union is ``train_idx``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + FOLD_SEED)
    perm = train_idx.cpu()[torch.randperm(len(train_idx), generator=g)]
    return [perm[k::folds].sort().values for k in range(folds)]


def fold_seed(seed: int, k: int) -> int:
    """The training stream (data order, augmentation) of fold k's model: one per fold model."""
    return seed + 7919 * (k + 2)


class CrossfitFit:
    """K fold models of ``make_model()`` over ``rows`` of ``source``'s train split.

    Args:
        make_model: a fresh model returning ``(logits, features)``; called after
            ``torch.manual_seed(seed * 31 + k)`` for fold k's model.
        make_optimizer: the optimizer of a model.
        rows: int64 [n] the training rows (global indices of the train split).
        labels: int64, each global train index's observed label.
        settings: the recipe (folds, rounds, epochs, ...).
        seed: the models' init and training streams; ``split_seed`` the folds'.
        ema_decay: the weight EMA the models train with (0: none).
        batch_size: the prediction batch size.
    """

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        source: ImageSource,
        rows: torch.Tensor,
        labels: torch.Tensor,
        settings: CrossfitSettings,
        *,
        seed: int,
        split_seed: int,
        ema_decay: float,
        batch_size: int,
    ) -> None:
        self.make_model, self.make_optimizer = make_model, make_optimizer
        self.source, self.labels, self.settings = source, labels.cpu(), settings
        self.seed, self.ema_decay, self.batch_size = seed, ema_decay, batch_size
        self.folds = assign_folds(rows, settings.folds, split_seed)
        self.fold_of = torch.full((len(self.labels),), -1, dtype=torch.int64)  # -1: not a row
        for k, fold in enumerate(self.folds):
            self.fold_of[fold] = k
        self.models = [self._new_model(k) for k in range(self._round_folds(0))]
        self.fold_epochs: list[int] = []  # epochs each model trained (early stopping)
        self.fold_accuracy: list[float] = []  # its accuracy on its fold's observed labels
        self.rounds_done = 0
        self.transition: torch.Tensor | None = None  # the channel a refit trains through
        self.channel_kind: str | None = None  # which: "anchor" or "symmetric"
        self.concentration: float | None = None  # the anchor matrix's, choose_channel's input
        self.refit_skipped = False  # the channel left a class unidentifiable
        self.trained = False

    def _channel_round(self, r: int) -> bool:
        """Whether round r (0-based) only estimates the refit's channel."""
        return r == 0 and self.settings.rounds > 1

    def _round_folds(self, r: int) -> int:
        """How many fold models round r trains: the first ones, in fold order."""
        return self.settings.channel_folds if self._channel_round(r) else self.settings.folds

    def _new_model(self, k: int) -> nn.Module:
        torch.manual_seed(self.seed * 31 + k)
        return self.make_model().to(self.source.device)

    def fit(self, progress: Any = None, save: Callable[[], None] | None = None) -> None:
        """Train the rounds not trained yet (all of them on a fresh fit); ``save()`` is called
        after each (a resumable checkpoint)."""
        s = self.settings
        while self.rounds_done < s.rounds and not self.refit_skipped:
            if self.rounds_done > 0:
                if not self._prepare_refit():
                    self.refit_skipped = True
                    self._complete_round(progress, save)
                    break
                self.models = [self._new_model(k) for k in range(s.folds)]
                self.fold_epochs, self.fold_accuracy = [], []
            self._fit_round(progress, range(len(self.models)))
            self.rounds_done += 1
            if save is not None:
                save()
        self.trained = True

    def _complete_round(self, progress: Any, save: Callable[[], None] | None) -> None:
        """A channel round that trained only some folds' models stands when its refit is
        skipped: train the other folds' models as it would have, so that every fold has one."""
        have, folds = len(self.models), self.settings.folds
        if have == folds:
            return
        self.models += [self._new_model(k) for k in range(have, folds)]
        self._fit_round(progress, range(have, folds))
        if save is not None:
            save()

    def training_rows(self, k: int) -> torch.Tensor:
        """The rows model k trains on: every fold but k."""
        return torch.cat([f for j, f in enumerate(self.folds) if j != k])

    def _prepare_refit(self) -> bool:
        """The channel the next round trains through, from the current models' out-of-fold
        probabilities; False where it leaves a clean class unidentifiable."""
        _, probs = self._out_of_fold()
        anchor = anchor_transition(probs)
        self.concentration = float(off_diagonal_concentration(anchor).mean())
        kind, transition = choose_channel(anchor)
        ok = identifiable(transition)
        self.transition, self.channel_kind = (transition, kind) if ok else (None, None)
        return ok

    def _out_of_fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the folds the current models predict, fold by fold, and those models'
        probabilities of their observed label: (int64 [N], float64 [N, C]). Models trained
        through a channel predict the clean label: their P(clean | x) T."""
        folds = self.folds[: len(self.models)]  # a channel round's: the first folds only
        probs = torch.cat([
            predict_logprobs(m, self.source, "train", f.to(self.source.device), self.batch_size)
            .cpu() for m, f in zip(self.models, folds, strict=True)
        ]).double().exp()  # fmt: skip
        if self.transition is not None:
            probs = probs @ self.transition.double()
        return torch.cat(folds), probs

    def _fit_round(self, progress: Any, ks: range) -> None:
        """Train the current round's models of folds ``ks``."""
        s = self.settings
        loss = F.cross_entropy if self.transition is None else forward_loss(self.transition)
        what = f", round {self.rounds_done + 1}/{s.rounds}" if s.rounds > 1 else ""
        epochs = s.channel_epochs if self._channel_round(self.rounds_done) else s.epochs
        for k in ks:
            held_out = self.folds[k].to(self.source.device)
            labels = self.labels[self.folds[k]].to(self.source.device)

            def accuracy(m: nn.Module, rows=held_out, labels=labels) -> float:
                lp = predict_logprobs(m, self.source, "train", rows, self.batch_size)
                return float((lp.argmax(1) == labels).float().mean())

            stop = EarlyStopping(accuracy, patience=s.patience)
            self.models[k] = fit_supervised(
                self.models[k],
                self.source,
                self.training_rows(k),
                self.labels,
                epochs=epochs,
                batch_size=s.batch_size,
                optimizer=self.make_optimizer(self.models[k]),
                seed=fold_seed(self.seed, k),
                ema_decay=self.ema_decay,
                early_stopping=stop,
                schedule=s.schedule,
                loss=loss,
                progress=progress,
                description=f"crossfit model {k + 1}/{s.folds}{what}",
            )
            self.fold_epochs.append(stop.best_epoch)
            self.fold_accuracy.append(stop.best_score)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed fit goes on from: the models and what their rounds found."""
        return {
            "models": [m.state_dict() for m in self.models],
            "epochs": self.fold_epochs,
            "accuracy": self.fold_accuracy,
            "rounds_done": self.rounds_done,
            "transition": self.transition,
            "channel_kind": self.channel_kind,
            "concentration": self.concentration,
            "refit_skipped": self.refit_skipped,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Go on from ``state_dict()``: after its last round, or after an earlier one (``fit``
        then trains the later rounds). A skipped refit stands: retried on a completed channel
        round's K models, it would estimate another channel than the one it was judged by."""
        self.models = [self._new_model(k) for k in range(len(saved["models"]))]
        for model, state in zip(self.models, saved["models"], strict=True):
            model.load_state_dict(state)
            model.eval()
        self.fold_epochs, self.fold_accuracy = saved["epochs"], saved["accuracy"]
        self.rounds_done = saved["rounds_done"]
        self.transition, self.channel_kind = saved["transition"], saved["channel_kind"]
        self.concentration = saved["concentration"]
        self.refit_skipped = saved["refit_skipped"]

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """Out-of-fold log p(c | x) for training rows, the K models' mean probability for any
        other row (of any other split) -> float32 [n, C] on the CPU."""
        if not self.trained:
            self.fit()
        rows = rows.cpu()
        per_model = model_logprobs(self.models, self.source, split, rows, self.batch_size)
        mean = mean_of(per_model)
        if split != "train":
            return mean
        fold = self.fold_of[rows]
        out = mean.clone()
        inside = fold >= 0
        out[inside] = per_model[fold[inside], torch.nonzero(inside).squeeze(1)]
        return out

    def fit_spec(self) -> dict[str, Any]:
        """What the fit found, as a cache's spec records it: None (which matches any stored
        value) until the models are trained, so that a complete cache is recognised before
        anything is refit."""
        spec: dict[str, Any] = {
            "fold_epochs": self.fold_epochs,
            "fold_accuracy": self.fold_accuracy,
        }
        if self.settings.rounds > 1:
            t, c = self.transition, self.concentration
            spec |= {
                "refit_noise": None if t is None else round(float(1 - t.diagonal().mean()), 6),
                "refit_skipped": self.refit_skipped,
                "refit_channel": self.channel_kind,  # which channel it chose
                "concentration": None if c is None else round(c, 6),  # and from what
            }
        return spec if self.trained else dict.fromkeys(spec)


def model_logprobs(
    models: list[nn.Module], source: ImageSource, split: str, rows: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Each model's log-probs on ``rows`` of ``split``: float32 [K, n, C] on the CPU."""
    device_rows = rows.to(source.device)
    return torch.stack(
        [predict_logprobs(m, source, split, device_rows, batch_size).cpu() for m in models]
    )


def mean_of(per_model: torch.Tensor) -> torch.Tensor:
    """[K, n, C] log-probs -> the log of their mean probability [n, C]."""
    return torch.logsumexp(per_model, dim=0) - torch.log(torch.tensor(float(len(per_model))))


class _LogitsAndNone(nn.Module):
    """A model that returns logits, as bdsel's fits call models: ``(logits, None)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.model(x)
        return out if isinstance(out, tuple) else (out, None)


class CrossfitModels:
    """What :func:`crossfit_models` returns: ``logprobs`` float32 [N, C], row i from the model
    of the fold that never saw row i (of the clean label, when a channel was fitted);
    ``predict(dataset)`` the models' mean for other rows; ``models``, ``transition`` (the
    noise channel [C, C] the last round trained through, or None), ``channel`` (its kind),
    ``fold_accuracy`` (each model's on its fold's observed labels)."""

    def __init__(self, fit: CrossfitFit, logprobs: torch.Tensor) -> None:
        self._fit, self.logprobs = fit, logprobs
        self.models = [m.model for m in fit.models]
        self.transition, self.channel = fit.transition, fit.channel_kind
        self.fold_accuracy = fit.fold_accuracy

    def predict(self, dataset: Any, batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
        """The models' mean log-probs for every item of ``dataset``: float32 [M, C]."""
        source = DatasetImages({"rows": dataset}, self._fit.source.device, num_workers=num_workers)
        rows = torch.arange(len(dataset))
        return mean_of(model_logprobs(self._fit.models, source, "rows", rows, batch_size))


def _recipe(settings: dict[str, Any]) -> CrossfitSettings:
    """The crossfit settings given by name, checked: a ValueError names a wrong one."""
    if "model" in settings:
        raise ValueError("model: make_model makes the models here (model names a bdsel model)")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(CrossfitSettings)})
    if unknown:
        raise ValueError(f"unknown crossfit setting {unknown[0]!r} (bdsel configs keys crossfit)")
    recipe = CrossfitSettings(**settings)
    check_ranges(recipe)
    return recipe


def crossfit_models(
    make_model: Callable[[], nn.Module],
    train: Any,
    labels: Any,
    n_classes: int,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    ema_decay: float = 0.998,
    eval_batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    **settings: Any,
) -> CrossfitModels:
    """The shipped crossfit recipe (``zeroshot.predictor: crossfit``) on your own data and
    model: out-of-fold log-probs of every row of ``train`` from models that never trained on
    it, learned for the clean label through the estimated noise channel. No clean label.

    Args:
        make_model: a fresh model (logits out, or bdsel's ``(logits, features)``), called
            once per fold model and round after ``torch.manual_seed``.
        train: a map-style dataset; item i is an image tensor or a tuple whose first element
            is one (its transforms are the augmentation).
        labels: the items' observed (possibly noisy) labels, int [N] in 0..n_classes-1.
        settings: the recipe's (:class:`CrossfitSettings`), by name, as ``zeroshot.*`` sets
            them for ``zeroshot.predictor=crossfit`` (``bdsel configs keys crossfit``): folds,
            rounds, epochs, lr, batch_size, channel_epochs, ...
    """
    recipe = _recipe(settings)
    y = checked_labels(labels, len(train), n_classes, "labels")
    source = DatasetImages({"train": train}, torch.device(device), num_workers=num_workers)
    optimizer = TrainConfig(
        optimizer=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    fit = CrossfitFit(
        lambda: _LogitsAndNone(make_model()),
        lambda model: build_optimizer(model, optimizer),
        source,
        torch.arange(len(y)),
        y.long(),
        recipe,
        seed=seed,
        split_seed=seed,
        ema_decay=ema_decay,
        batch_size=eval_batch_size,
    )
    if progress:
        with step_progress() as bar:
            fit.fit(bar)
    else:
        fit.fit()
    return CrossfitModels(fit, fit.logprobs("train", torch.arange(len(y))))
