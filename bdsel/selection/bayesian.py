"""The paper's method: Bayesian data selection (Deng, Cui, Zhu, NeurIPS 2023).

score(x, y) = α · mean_s log p(y | f_s) + (1 − α) · log p_zs(y | x) − log mean_s p(y | f_s)

with f_s samples from the last-layer KFAC Laplace posterior of the model being trained
(``bdsel.laplace``) and p_zs the cached zero-shot predictor (``zs_logprobs``, a table by global
index with its temperature already applied). The posterior is updated after every step from
the selected batch's training forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from bdsel.config import checks
from bdsel.laplace import LastLayerLaplace
from bdsel.selection.base import Candidates, ForwardOutputs, Selection, top_k_positions
from bdsel.selection.bayesian_score import (
    adaptive_alpha,
    score_from_terms,
    streaming_score_terms,
)
from bdsel.selection.registry import register_selector
from bdsel.selection.simple import WarmupSelector
from bdsel.table import LabelColumn, ZeroShotTable, as_lookup


@dataclass
class BayesianSettings:
    """``select.*`` when select.method=bayesian: the score's and the posterior's settings."""

    # score = a * mean_s log p(y|f_s) + (1-a) * log p_zs(y|x) - log mean_s p(y|f_s)
    # adaptive: a = CE_zs / (CE_bayes + CE_zs) from each candidate batch (the paper's option)
    alpha: float | Literal["adaptive"] = 0.2
    n_samples: int = 256  # S logit samples a candidate
    prior_precision: float = 10.0  # tau_0
    n_effective: float = 200.0  # n_e, the data size the posterior stands for
    momentum: float = 0.99  # m, the KFAC factors' EMA
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "alpha": (lambda v: v == "adaptive" or 0 <= v <= 1, "a weight in [0, 1] or adaptive"),
        "n_samples": checks.POSITIVE_INT_RULE,
        "prior_precision": checks.NON_NEGATIVE_RULE,
        "n_effective": checks.POSITIVE_FLOAT_RULE,
        "momentum": (checks.within(0, 1, high_open=True), "a float in [0, 1)"),
    }  # fmt: skip


@register_selector("bayesian")
class Bayesian(WarmupSelector):
    """The paper's score with a last-layer KFAC Laplace posterior of the trained model.

    Args:
        n_selected: n_b, the points trained on per step.
        zs_logprobs: log p_zs(c | x) [N, C] by global index: a
            :class:`~bdsel.table.ZeroShotTable` (its temperature applied) or a tensor; or, as
            ``bdsel train`` passes it, a :class:`~bdsel.table.LabelColumn` (the observed labels'
            entries only).
        n_features: D, the width of the features (the last linear layer's ``in_features``).
        alpha: α, the weight of the model's mean log-likelihood against the zero-shot term;
            ``"adaptive"``: α = CE_zs / (CE_bayes + CE_zs) from each candidate batch.
        n_samples: S, logit samples from the posterior per candidate.
        prior_precision, n_effective, momentum: the posterior's τ0, n_e and m
            (:class:`~bdsel.laplace.LastLayerLaplace`, with the empirical Fisher of the
            paper's reference code).
        warmup_epochs: uniform picks (and no candidate forward) in the first epochs.
        device: where the posterior lives (default: the table's device).
    """

    Settings = BayesianSettings
    needs_forward = True
    requires = ("zs_logprobs",)

    def __init__(
        self,
        n_selected: int,
        *,
        zs_logprobs: ZeroShotTable | LabelColumn | torch.Tensor,
        n_features: int,
        alpha: float | str = 0.2,
        n_samples: int = 256,
        prior_precision: float = 10.0,
        n_effective: float = 200.0,
        momentum: float = 0.99,
        warmup_epochs: int = 0,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(n_selected, warmup_epochs=warmup_epochs, seed=seed)
        if alpha != "adaptive" and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a weight in [0, 1] or 'adaptive', got {alpha!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
        self.table = as_lookup(zs_logprobs, "zs_logprobs")
        self.n_rows, self.n_classes = self.table.n_rows, self.table.n_classes
        self.alpha = alpha if alpha == "adaptive" else float(alpha)
        self.n_samples = int(n_samples)
        # Common random numbers: one set of S noise vectors for all candidates (the same
        # marginals, S·C² + S·n_B·C work instead of S·n_B·C²; see LastLayerLaplace.sample_logits).
        # bench_step's --independent-noise turns it off to time the other.
        self.shared_noise = True
        self.posterior = LastLayerLaplace(
            n_features,
            self.n_classes,
            prior_precision=prior_precision,
            n_effective=n_effective,
            momentum=momentum,
            device=device if device is not None else self.table.device,
        )
        # Each row's score at its last visit (+inf: never scored), for select.rescore.
        self._last = torch.full((self.n_rows,), torch.inf, device=self.table.device)

    def pick(
        self,
        candidates: Candidates,
        outputs: ForwardOutputs | None,
        generator: torch.Generator,
    ) -> Selection:
        if self.uniform_epoch:
            return self.uniform.pick(candidates, outputs, generator)
        assert outputs is not None
        labels = candidates.labels
        n = labels.shape[0]
        self._check_widths(outputs.logits, outputs.features)

        zs = self.table.label_logprob(candidates.indices, labels)  # [n_B]
        first: list[torch.Tensor] = []

        def chunks():
            for piece in self.posterior.iter_logit_samples(
                outputs.logits,
                outputs.features,
                self.n_samples,
                generator,
                shared_noise=self.shared_noise,
            ):
                if not first:
                    first.append(piece)
                yield piece

        terms = streaming_score_terms(chunks(), zs, labels)
        if self.alpha == "adaptive":
            alpha = adaptive_alpha(terms.zs_logprob, terms.log_mean_lik)
        else:
            alpha = torch.tensor(self.alpha, device=labels.device)
        scores = score_from_terms(terms, alpha)
        positions = top_k_positions(scores, self.n_selected)
        self._last[candidates.indices.to(self._last.device)] = scores.float().to(self._last.device)

        # Predictive spread of the observed label's logit (0 before the first update: MAP).
        sample0 = first[0]
        observed_logit = sample0[:, torch.arange(n, device=labels.device), labels]
        pred_std = (
            observed_logit.std(0).mean() if sample0.shape[0] > 1 else observed_logit.new_zeros(())
        )
        selected_labels = labels[positions]
        zs_top = self.table.top_class(candidates.indices[positions])
        zs_agree = (zs_top == selected_labels).float().mean()
        return Selection(
            positions=positions,
            scalars={
                "alpha": alpha.float(),
                "term_loglik": terms.mean_loglik.mean().float(),
                "term_zs": terms.zs_logprob.mean().float(),
                "term_lme": terms.log_mean_lik.mean().float(),
                "pred_std": pred_std.float(),
                "zs_agree": zs_agree,
            },
        )

    def _check_widths(self, logits: torch.Tensor, features: torch.Tensor) -> None:
        if logits.shape[1] != self.posterior.n_classes:
            raise ValueError(
                f"logits: {logits.shape[1]} classes, the zero-shot table has "
                f"{self.posterior.n_classes}"
            )
        if features.shape[1] != self.posterior.n_features:
            raise ValueError(
                f"features: width {features.shape[1]}, the selector was built with "
                f"n_features={self.posterior.n_features}"
            )

    def wants_forward(self) -> bool:
        return not self.uniform_epoch  # uniform picks (warm-up) need no forward

    def last_scores(self, indices: torch.Tensor) -> torch.Tensor | None:
        """The score at each candidate's last visit, from the second selecting epoch on (in
        the first, every row is scored once: its epoch visits each)."""
        if self.epoch <= self.warmup_epochs:  # a warm-up epoch, or the first selecting one
            return None
        return self._last[indices.to(self._last.device)].to(indices.device)

    def _observe(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        self._check_widths(logits, features)
        probs = torch.softmax(logits, dim=1)
        # Under torchrun every rank folds the union of all ranks' selected batches into A and G,
        # so all ranks hold the same posterior.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.posterior.update(features, probs, labels, all_reduce=distributed)

    def state_dict(self) -> dict[str, Any]:
        posterior = self.posterior.state_dict()
        return {**super().state_dict(), "posterior": posterior, "last_scores": self._last.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.posterior.load_state_dict(state["posterior"])
        last = state.get("last_scores")  # absent from checkpoints older than select.rescore
        if last is not None:
            if last.shape != self._last.shape:
                raise ValueError(
                    f"last_scores: {last.shape[0]} rows in the state, the table has "
                    f"{self._last.shape[0]}"
                )
            self._last.copy_(last)
        else:
            self._last.fill_(torch.inf)
