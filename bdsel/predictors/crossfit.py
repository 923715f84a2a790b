"""The ``crossfit`` predictor: a stand-in for CLIP that needs no clean labels.

The paper's point is that no clean hold-out set is needed. Offline there is no CLIP, so this
is the next best thing that needs none: the training subset is split into K folds; model k
trains on the observed (possibly noisy) labels of every fold but k, with the weight EMA,
stopping early on fold k's observed labels, and predicts fold k: no row is predicted by a
model that saw it. Other rows (test, hold-out) get the mean of the K models' probabilities.

Models trained on noisy labels learn the noise (a pairflip channel entirely), so by default
(``rounds: 2, refit: forward``) a first round only estimates the noise channel: it trains the
models of the first ``channel_folds`` folds (one) for ``channel_epochs``, and their
out-of-fold probabilities give the channel's anchor-point estimate
(bdsel.data.noise_channel), or, where its rows spread their off-diagonal mass as symmetric
noise does (``channel: auto``), the symmetric channel of its rate: the anchor matrix then
carries the model's own confusions too. A second round trains K fresh models on the same
folds, each on the other folds' rows through that channel, with the forward loss correction:
they learn the clean label, and so are as sure as a model of clean labels that a mislabeled
point is wrong. Where the channel leaves a class unidentifiable (its diagonal does not
dominate), the refit is skipped and the first round stands, its missing folds' models
trained as it would have. ``refit_init: continue`` starts the second round's models of the
channel round's folds from that round's models instead (cheaper, and worse: docs/predictors.md).

``refit: trusted`` instead trains the second round on the rows cleanlab's ``find_label_issues``
does not flag from the first round's out-of-fold probabilities, skipped where it trusts under
``MIN_TRUSTED`` of the rows. In neither is a row predicted by a model that trained on it
(what model k trains on depends on fold k's labels only through the first round's models).
The rounds compared: docs/results/holdout_free/.

Its spec records hashes of the training subset and its observed labels: ``train`` refuses
the cache for another subset or noise (its models may have seen rows they predict).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bdsel.cache.provenance import fitted_rows, split_stem
from bdsel.calibration import fit_temperature_and_noise
from bdsel.config import Config
from bdsel.data import RunData
from bdsel.data.batching import ImageSource
from bdsel.data.label_issues import find_label_issues
from bdsel.data.noise_channel import (
    anchor_transition,
    choose_channel,
    forward_loss,
    identifiable,
    off_diagonal_concentration,
)
from bdsel.evaluation import predict_logprobs
from bdsel.fit import EarlyStopping, fit_supervised
from bdsel.models import create_model
from bdsel.optim import build_optimizer
from bdsel.predictors.crossfit_spec import crossfit_settings, crossfit_summary_rows
from bdsel.predictors.holdout import (
    as_train_config,
    training_source,
    weights_sha256,
)
from bdsel.predictors.registry import register_predictor
from bdsel.rundir import atomic_write_bytes

FOLD_SEED = 104_729  # the fold assignment's stream, apart from the split's and the models'
# The least share of the training rows a refit round trains on; below it the refit is skipped.
MIN_TRUSTED = 0.5


def cache_stem(config: Config) -> str:
    """Everything its outputs depend on: split, noise, folds and model."""
    c = config.zeroshot.crossfit
    return f"{config.data.name}-crossfit{c.folds}-{c.model}-{split_stem(config)}"


def assign_folds(train_idx: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """The training subset cut into ``folds`` disjoint folds of near-equal size: a list of
    int64 [n_k] sorted global indices whose union is ``train_idx``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + FOLD_SEED)
    perm = train_idx.cpu()[torch.randperm(len(train_idx), generator=g)]
    return [perm[k::folds].sort().values for k in range(folds)]


def fold_seed(seed: int, k: int) -> int:
    """The training stream (data order, augmentation) of fold k's model: one per fold model."""
    return seed + 7919 * (k + 2)


@register_predictor("crossfit", section="zeroshot.crossfit", cache_stem=cache_stem)
class CrossfitPredictor:
    """K models, each trained on the observed labels of all folds but its own."""

    calibration_labels = "observed"  # noise included: the temperature is fitted with it

    def __init__(self, config: Config, data: RunData, source: ImageSource) -> None:
        c = config.zeroshot.crossfit
        self.config, self.data, self.source = config, data, source
        split_seed = config.seed if config.data.split_seed is None else config.data.split_seed
        self.folds = assign_folds(data.train_idx, c.folds, split_seed)
        n_rows = len(data.dataset.train.labels)
        self.fold_of = torch.full((n_rows,), -1, dtype=torch.int64)  # -1: not in the subset
        for k, rows in enumerate(self.folds):
            self.fold_of[rows] = k
        self.models = [self._new_model(k) for k in range(self._round_folds(0))]
        self.fold_epochs: list[int] = []  # epochs each model trained (early stopping)
        self.fold_accuracy: list[float] = []  # its accuracy on its fold's observed labels
        self.rounds_done = 0
        self.trusted: torch.Tensor | None = None  # a refit round's rows: what cleanlab kept
        self.transition: torch.Tensor | None = None  # a forward refit's channel [C, C]
        self.channel_kind: str | None = None  # which: "anchor" or "symmetric"
        self.concentration: float | None = None  # the anchor matrix's, choose_channel's input
        self.refit_skipped = False  # too few rows trusted: the round before stands
        self.trained = False

    @staticmethod
    def settings(config: Config) -> dict[str, Any]:
        """The settings that shape its outputs, as its spec names them."""
        return crossfit_settings(config)

    @staticmethod
    def fits_cleaned(config: Config) -> bool:
        """Whether its models train on the train subset data.clean leaves, not the whole one."""
        return config.zeroshot.crossfit.cleaned

    def _channel_round(self, r: int) -> bool:
        """Whether round r (0-based) only estimates a forward refit's channel."""
        return r == 0 and self.config.zeroshot.crossfit.channel_round

    def _continued(self, r: int) -> int:
        """How many of round r's models (the first ones) go on from the round before's."""
        c = self.config.zeroshot.crossfit
        carried = r == 1 and self._channel_round(0) and c.refit_init == "continue"
        return c.channel_folds if carried else 0

    def _round_folds(self, r: int) -> int:
        """How many fold models round r trains: the first ones, in fold order."""
        c = self.config.zeroshot.crossfit
        return c.channel_folds if self._channel_round(r) else c.folds

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> CrossfitPredictor:
        return cls(config, data, training_source(config, data, device))

    @staticmethod
    def summary_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
        """What its spec says about its fit, as the CLI prints it."""
        return crossfit_summary_rows(spec)

    def describe(self) -> str:
        c = self.config.zeroshot.crossfit
        n = len(self.data.train_idx)
        epochs = f"{'at most ' if c.patience else ''}{c.epochs} epochs each"
        if c.schedule == "cosine":
            epochs += ", cosine learning rate"
        more = f"; then {c.rounds - 1} more round{'s' if c.rounds > 2 else ''} of them afresh"
        if c.rounds == 1:
            refit = ""
        elif c.refit == "forward":
            first = f"{c.channel_folds} of them" if c.channel_folds < c.folds else "all of them"
            channel = {
                "anchor": "",
                "auto": ", or their symmetric projection",
                "fitted": ", or a symmetric channel of the noise rate fitted to them",
            }[c.channel]
            start = "afresh"
            if c.refit_init == "continue":
                start = f"({first} going on for {c.epochs - c.channel_epochs} epochs)"
            refit = (
                f"; the first round trains {first} for {c.channel_epochs} epochs, only to "
                f"estimate the noise channel (anchor points{channel}); then {c.rounds - 1} more "
                f"round{'s' if c.rounds > 2 else ''} of them {start} on every point, through it"
            )
        else:
            refit = (
                f"{more} on the points cleanlab trusts from the round before, if at least "
                f"{MIN_TRUSTED:.0%} of them"
            )
        points = "training points data.clean keeps" if c.cleaned else "training points"
        return (
            f"{c.folds} cross-fitted models ({c.model}, {epochs}, on "
            f"{c.folds - 1}/{c.folds} of {n} {points} with their observed labels{refit})"
        )

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and labels for the temperature: the training subset's observed labels, each
        predicted by the model that never saw it (p_zs becomes a calibrated probability that
        the observed label is right)."""
        return self.data.train_idx, self.data.observed[self.data.train_idx]

    def fit(self, progress: Any = None, save: Any = None) -> None:
        """Train the rounds not trained yet (all of them on a fresh predictor); ``save()`` is
        called after each (a resumable checkpoint)."""
        c = self.config.zeroshot.crossfit
        while self.rounds_done < c.rounds and not self.refit_skipped:
            if self.rounds_done > 0:
                if not self._prepare_refit():
                    self.refit_skipped = True
                    self._complete_round(progress, save)
                    break
                kept = self.models[: self._continued(self.rounds_done)]
                self.models = kept + [self._new_model(k) for k in range(len(kept), c.folds)]
                self.fold_epochs, self.fold_accuracy = [], []
            self._fit_round(progress, range(len(self.models)))
            self.rounds_done += 1
            if save is not None:
                save()
        self.trained = True

    def _complete_round(self, progress: Any, save: Any) -> None:
        """A channel round that trained only some folds' models stands when its refit is
        skipped: train the other folds' models as it would have, so that every fold has one."""
        have, folds = len(self.models), self.config.zeroshot.crossfit.folds
        if have == folds:
            return
        self.models += [self._new_model(k) for k in range(have, folds)]
        self._fit_round(progress, range(have, folds))
        if save is not None:
            save()

    def _new_model(self, k: int) -> torch.nn.Module:
        ds = self.data.dataset
        torch.manual_seed(self.config.seed * 31 + k)
        model = create_model(
            self.config.zeroshot.crossfit.model, n_classes=ds.n_classes, in_channels=ds.in_channels
        )
        return model.to(self.source.device)

    def training_rows(self, k: int) -> torch.Tensor:
        """The rows model k of the current round trains on: every fold but k, and in a refit
        round only the rows the previous round's out-of-fold probabilities trusted."""
        rows = torch.cat([f for j, f in enumerate(self.folds) if j != k])
        if self.trusted is not None:
            rows = rows[torch.isin(rows, self.trusted)]
        return rows

    def _prepare_refit(self) -> bool:
        """Set what the next round trains on from the current models' out-of-fold
        probabilities: the rows cleanlab trusts (``trusted``) or the noise channel
        (``forward``). False when the round before is too poor to refit from: cleanlab trusts
        under MIN_TRUSTED of the rows, or the channel leaves a clean class unidentifiable."""
        c = self.config.zeroshot.crossfit
        if c.refit == "forward":
            rows, probs = self._out_of_fold()
            anchor = anchor_transition(probs)
            self.concentration = float(off_diagonal_concentration(anchor).mean())
            if c.channel == "anchor":
                kind, transition = "anchor", anchor
            else:
                rate = self._fitted_rate(rows, probs) if c.channel == "fitted" else None
                kind, transition = choose_channel(anchor, rate)
            ok = identifiable(transition)
            self.transition, self.channel_kind = (transition, kind) if ok else (None, None)
            return ok
        trusted = self._trusted_rows()
        if len(trusted) < MIN_TRUSTED * len(self.data.train_idx):
            return False
        self.trusted = trusted
        return True

    def _fitted_rate(self, rows: torch.Tensor, probs: torch.Tensor) -> float:
        """The symmetric noise rate of most likelihood of the rows' observed labels under the
        out-of-fold probabilities ``probs``, with a temperature fitted alongside
        (bdsel.calibration.fit_temperature_and_noise): unlike the anchor matrix's
        diagonal, it does not count the model's own confusions as noise."""
        return fit_temperature_and_noise(probs.clamp_min(1e-300).log(), self.data.observed[rows])[1]

    def _trusted_rows(self) -> torch.Tensor:
        """The training rows cleanlab does not flag from the out-of-fold probabilities: sorted
        int64."""
        rows, probs = self._out_of_fold()
        flagged = find_label_issues(
            self.data.observed[rows], probs, self.config.zeroshot.crossfit.refit_filter
        )
        return rows[~flagged].sort().values

    def _out_of_fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the folds the current models predict, fold by fold, and those models'
        probabilities of their observed label: (int64 [N], float64 [N, C]). Models trained
        through a channel predict the clean label: their P(clean | x) T."""
        bs = self.config.zeroshot.batch_size
        folds = self.folds[: len(self.models)]  # a channel round's: the first folds only
        probs = torch.cat([
            predict_logprobs(m, self.source, "train", f.to(self.source.device), bs).cpu()
            for m, f in zip(self.models, folds, strict=True)
        ]).double().exp()  # fmt: skip
        if self.transition is not None:
            probs = probs @ self.transition.double()
        return torch.cat(folds), probs

    def _fit_round(self, progress: Any, ks: range) -> None:
        """Train the current round's models of folds ``ks``."""
        c = self.config.zeroshot.crossfit
        observed = self.data.observed
        bs = self.config.zeroshot.batch_size
        loss = F.cross_entropy if self.transition is None else forward_loss(self.transition)
        what = f", round {self.rounds_done + 1}/{c.rounds}" if c.rounds > 1 else ""
        epochs = c.channel_epochs if self._channel_round(self.rounds_done) else c.epochs
        continued = self._continued(self.rounds_done)  # they have channel_epochs behind them
        for k in ks:
            model = self.models[k]
            carried = k < continued
            held_out = self.folds[k]
            if self.trusted is not None:  # scored on its fold's trusted labels
                held_out = held_out[torch.isin(held_out, self.trusted)]
            held_out = held_out.to(self.source.device)
            labels = observed[held_out.cpu()].to(self.source.device)

            def accuracy(m: torch.nn.Module, rows=held_out, labels=labels) -> float:
                lp = predict_logprobs(m, self.source, "train", rows, bs)
                return float((lp.argmax(1) == labels).float().mean())

            stop = EarlyStopping(accuracy, patience=c.patience)
            optimizer = build_optimizer(model, as_train_config(self.config, c))
            self.models[k] = fit_supervised(
                model,
                self.source,
                self.training_rows(k),
                observed,
                epochs=epochs - c.channel_epochs if carried else epochs,
                batch_size=c.batch_size,
                optimizer=optimizer,
                seed=fold_seed(self.config.seed, k),
                ema_decay=self.config.train.ema_decay,
                early_stopping=stop,
                schedule=c.schedule,
                loss=loss,
                progress=progress,
                description=f"crossfit model {k + 1}/{c.folds}{what}"
                + (", continued" if carried else ""),
            )
            self.fold_epochs.append(stop.best_epoch)
            self.fold_accuracy.append(stop.best_score)

    def fit_or_load(self, weights: Path, progress: Any = None) -> None:
        """Train, or reload the models an interrupted ``cache-zeroshot`` saved at ``weights``
        (after its last round, or after an earlier one: the later rounds are then trained)."""
        if weights.is_file():
            saved = torch.load(weights, map_location=self.source.device)
            self.models = [self._new_model(k) for k in range(len(saved["models"]))]
            for model, state in zip(self.models, saved["models"], strict=True):
                model.load_state_dict(state)
                model.eval()
            self.fold_epochs, self.fold_accuracy = saved["epochs"], saved["accuracy"]
            self.rounds_done = saved.get("rounds_done", 1)
            self.trusted = saved.get("trusted")
            self.transition = saved.get("transition")
            self.channel_kind = saved.get("channel_kind")
            self.concentration = saved.get("concentration")
            # A skipped refit stands: retried on a completed channel round's K models, it
            # would estimate another channel than the one round 1 was judged by.
            self.refit_skipped = saved.get("refit_skipped", False)
        self.fit(progress, save=lambda: self._save(weights))

    def _save(self, weights: Path) -> None:
        buf = io.BytesIO()
        state = {
            "models": [m.state_dict() for m in self.models],
            "epochs": self.fold_epochs,
            "accuracy": self.fold_accuracy,
            "rounds_done": self.rounds_done,
            "trusted": self.trusted,
            "transition": self.transition,
            "channel_kind": self.channel_kind,
            "concentration": self.concentration,
            "refit_skipped": self.refit_skipped,
        }
        torch.save(state, buf)
        atomic_write_bytes(weights, buf.getvalue())

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        """Out-of-fold log p(c | x) for training rows, the K models' mean probability for any
        other row -> float32 [n, C] on the CPU."""
        if not self.trained:
            self.fit()
        rows = rows.cpu()
        bs = self.config.zeroshot.batch_size
        device_rows = rows.to(self.source.device)
        per_model = torch.stack(
            [predict_logprobs(m, self.source, split, device_rows, bs).cpu() for m in self.models]
        )  # [K, n, C]
        k = len(self.models)
        mean = torch.logsumexp(per_model, dim=0) - torch.log(torch.tensor(float(k)))
        if split != "train":
            return mean
        fold = self.fold_of[rows]
        out = mean.clone()
        inside = fold >= 0
        out[inside] = per_model[fold[inside], torch.nonzero(inside).squeeze(1)]
        return out

    def spec(self) -> dict[str, Any]:
        return {
            **self.settings(self.config),
            **fitted_rows(self.config, self.data),
            # Fit results: None (matches any stored value) until the models are trained, so
            # that a complete cache is recognised before anything is refit.
            "fold_epochs": self.fold_epochs if self.trained else None,
            "fold_accuracy": self.fold_accuracy if self.trained else None,
            "weights_sha256": (
                weights_sha256([m.state_dict() for m in self.models]) if self.trained else None
            ),
        } | self._refit_spec()

    def _refit_spec(self) -> dict[str, Any]:
        """A refit round's training rows: how many the round before trusted (the last refit's;
        0 when even the first refit was skipped), or the channel a forward refit trained
        through (its noise rate, and with ``channel: auto`` which it chose and from what
        concentration); and whether a refit was skipped."""
        if self.config.zeroshot.crossfit.rounds == 1:
            return {}
        if self.config.zeroshot.crossfit.refit == "forward":
            t, c = self.transition, self.concentration
            spec = {
                "refit_noise": None if t is None else round(float(1 - t.diagonal().mean()), 6),
                "refit_skipped": self.refit_skipped,
                "refit_channel": self.channel_kind,  # with channel: auto, which it chose
                "concentration": None if c is None else round(c, 6),  # and from what
            }
            if not self.trained:
                spec = dict.fromkeys(spec)
            if self.config.zeroshot.crossfit.channel == "anchor":
                del spec["refit_channel"], spec["concentration"]
            return spec
        if not self.trained:
            return {"refit_points": None, "refit_skipped": None}
        points = 0 if self.trusted is None else len(self.trusted)
        return {"refit_points": points, "refit_skipped": self.refit_skipped}
