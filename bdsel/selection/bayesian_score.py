"""The Bayesian data-selection objective of Deng, Cui and Zhu (NeurIPS 2023; README, top).

For a candidate (x, y), logit samples f_1..f_S from the Laplace posterior and the
zero-shot log-probabilities log p_zs(·|x):

    score = α · (1/S) Σ_s log p(y|f_s) + (1 − α) · log p_zs(y|x) − log((1/S) Σ_s p(y|f_s))

The last term is computed as logsumexp_s log p(y|f_s) − log S, so it stays finite when
every p(y|f_s) underflows. All math runs in at least float32 (bf16/fp16 inputs from
autocast are upcast; float64 stays float64). Nothing here syncs the host.

For large C the [S, B, C] samples need not exist at once: `StreamingScore` keeps the
running Σ_s log p(y|f_s) and the running logsumexp over chunks [s, B, C].
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor


class ScoreTerms(NamedTuple):
    """The three per-point terms of the score, each [B]."""

    mean_loglik: Tensor  # (1/S) Σ_s log p(y|f_s)
    zs_logprob: Tensor  # log p_zs(y|x)
    log_mean_lik: Tensor  # log((1/S) Σ_s p(y|f_s))


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def sample_logliks(logit_samples: Tensor, labels: Tensor) -> Tensor:
    """log p(y|f_s) = f_s[y] − logsumexp(f_s): [S, B, C], [B] -> [S, B].

    Avoids materialising the full log_softmax (one fewer S·B·C tensor).
    """
    if logit_samples.ndim != 3 or labels.shape != logit_samples.shape[1:2]:
        raise ValueError(
            f"need logit_samples [S, B, C] and labels [B], got {tuple(logit_samples.shape)} "
            f"and {tuple(labels.shape)}"
        )
    f = logit_samples.to(_compute_dtype(logit_samples))
    idx = labels.to(device=f.device, dtype=torch.int64).view(1, -1, 1)
    f_y = f.gather(-1, idx.expand(f.shape[0], -1, 1)).squeeze(-1)
    return f_y - torch.logsumexp(f, dim=-1)


def _zs_logprob(zs_logprobs: Tensor, labels: Tensor, dtype: torch.dtype) -> Tensor:
    """log p_zs(y | x) [B]: the labels' entries of the rows [B, C], or the column as given [B]
    (a run's table holds only its observed labels' column)."""
    if zs_logprobs.ndim == 1 and zs_logprobs.shape[0] == labels.shape[0]:
        return zs_logprobs.to(dtype)
    if zs_logprobs.ndim != 2 or zs_logprobs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"zs_logprobs must be [B, C] or [B] with B = {labels.shape[0]}, got "
            f"{tuple(zs_logprobs.shape)}"
        )
    idx = labels.to(device=zs_logprobs.device, dtype=torch.int64)[:, None]
    return zs_logprobs.to(dtype).gather(-1, idx).squeeze(-1)


def score_terms(logit_samples: Tensor, zs_logprobs: Tensor, labels: Tensor) -> ScoreTerms:
    """The three per-point terms from samples [S, B, C], zs log-probs [B, C] (or the
    labels' column [B]), labels [B]."""
    ll = sample_logliks(logit_samples, labels)  # [S, B]
    dtype = _compute_dtype(ll, zs_logprobs)
    ll = ll.to(dtype)
    return ScoreTerms(
        mean_loglik=ll.mean(0),
        zs_logprob=_zs_logprob(zs_logprobs, labels, dtype),
        log_mean_lik=torch.logsumexp(ll, dim=0) - math.log(ll.shape[0]),
    )


def score_from_terms(terms: ScoreTerms, alpha: float | Tensor) -> Tensor:
    """α · mean_loglik + (1 − α) · zs_logprob − log_mean_lik -> [B].

    alpha: a float, a 0-d tensor (e.g. from `adaptive_alpha`) or a [B] tensor.
    """
    if isinstance(alpha, Tensor):
        alpha = alpha.to(device=terms.mean_loglik.device, dtype=terms.mean_loglik.dtype)
    return alpha * terms.mean_loglik + (1 - alpha) * terms.zs_logprob - terms.log_mean_lik


def bayesian_score(
    logit_samples: Tensor, zs_logprobs: Tensor, labels: Tensor, alpha: float | Tensor
) -> Tensor:
    """Per-candidate score [B] from logit samples [S, B, C], zs log-probs [B, C], labels [B].

    Higher is better: select the top n_selected.
    """
    return score_from_terms(score_terms(logit_samples, zs_logprobs, labels), alpha)


class StreamingScore:
    """Accumulates the score over chunks of logit samples [s, B, C] for one batch.

    Keeps only [B]-sized running state: Σ_s log p(y|f_s), logsumexp_s log p(y|f_s)
    and the sample count, so S·B·C never has to be held at once (large C).
    """

    def __init__(self, labels: Tensor) -> None:
        """labels: [B] observed labels of the candidates."""
        self.labels = labels
        self.n_samples = 0
        self._sum: Tensor | None = None
        self._lse: Tensor | None = None

    def update(self, logit_samples: Tensor) -> None:
        """Add one chunk of samples [s, B, C]."""
        ll = sample_logliks(logit_samples, self.labels)  # [s, B]
        chunk_sum, chunk_lse = ll.sum(0), torch.logsumexp(ll, dim=0)
        if self._sum is None or self._lse is None:
            self._sum, self._lse = chunk_sum, chunk_lse
        else:
            self._sum = self._sum + chunk_sum
            self._lse = torch.logaddexp(self._lse, chunk_lse)
        self.n_samples += ll.shape[0]

    def terms(self, zs_logprobs: Tensor) -> ScoreTerms:
        """The three per-point terms [B] over all samples added so far."""
        if self._sum is None or self._lse is None:
            raise RuntimeError("StreamingScore.terms() before any update()")
        dtype = _compute_dtype(self._sum, zs_logprobs)
        return ScoreTerms(
            mean_loglik=self._sum.to(dtype) / self.n_samples,
            zs_logprob=_zs_logprob(zs_logprobs, self.labels, dtype),
            log_mean_lik=self._lse.to(dtype) - math.log(self.n_samples),
        )

    def score(self, zs_logprobs: Tensor, alpha: float | Tensor) -> Tensor:
        """The score [B] over all samples added so far."""
        return score_from_terms(self.terms(zs_logprobs), alpha)


def streaming_score_terms(
    chunks: Iterable[Tensor], zs_logprobs: Tensor, labels: Tensor
) -> ScoreTerms:
    """`score_terms` over an iterable of [s, B, C] chunks (e.g. `iter_logit_samples`)."""
    acc = StreamingScore(labels)
    for chunk in chunks:
        acc.update(chunk)
    return acc.terms(zs_logprobs)


def adaptive_alpha(zs_term: Tensor, lme_term: Tensor, eps: float = 1e-12) -> Tensor:
    """α = CE_zs / (CE_bayes + CE_zs) as a 0-d tensor.

    Args:
        zs_term: [B] log p_zs(y|x) (`ScoreTerms.zs_logprob`); CE_zs = −mean.
        lme_term: [B] log E_s p(y|f_s) (`ScoreTerms.log_mean_lik`); CE_bayes = −mean.
        eps: floor of the denominator, so two zero losses give α = 0, not NaN.
    The result is clamped to [0, 1]: rounding can make a log-probability slightly > 0.
    """
    dtype = _compute_dtype(zs_term, lme_term)
    ce_zs = -zs_term.to(dtype).mean()
    ce_bayes = -lme_term.to(dtype).mean()
    return (ce_zs / (ce_bayes + ce_zs).clamp_min(eps)).clamp(0.0, 1.0)
