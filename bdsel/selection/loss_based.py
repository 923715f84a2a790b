"""RHO-LOSS's score-based baselines, as Mindermann et al. (ICML 2022) define them.

Each method is a per-candidate score plus a rule to pick from it:

    train_loss        top n_b by CE(f(x), y)
    grad_norm         top n_b by ‖softmax(f(x)) − onehot(y)‖₂ (last-layer gradient-norm bound)
    grad_norm_is      n_b draws with replacement, p ∝ that bound, loss weights 1/(n_B·p)
    irreducible_loss  lowest IL loss, −log p_IL(y|x) from the ``il_logprobs`` lookup
    rho_loss          top n_b by CE(f(x), y) − IL loss

``WarmupSelector`` (in ``simple``) holds the one shared rule: before ``select.warmup_epochs``
every method picks exactly as ``uniform`` does with the same generator. Nothing here syncs
the host.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from bdsel.selection.base import (
    Candidates,
    ForwardOutputs,
    Selection,
    top_k_positions,
)
from bdsel.selection.registry import register_selector
from bdsel.selection.simple import WarmupSelector
from bdsel.table import LabelColumn, ZeroShotTable, as_lookup


class ScoreSelector(WarmupSelector):
    """A per-candidate score [n_B] and a pick from it; logs the score's mean over the selected
    points and over all candidates (``<score_name>_selected``, ``<score_name>_candidates``).

    Subclasses define ``scores``; the default pick is the n_b highest (lowest if ``lowest``).
    During warm-up the score is still computed, for the log, but the pick is uniform's.
    """

    needs_forward = True
    score_name: ClassVar[str] = "score"
    lowest: ClassVar[bool] = False

    def scores(self, candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
        raise NotImplementedError

    def choose(self, scores: torch.Tensor, generator: torch.Generator) -> Selection:
        return Selection(top_k_positions(-scores if self.lowest else scores, self.n_selected))

    def pick(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        scores = self.scores(candidates, outputs)
        if self.uniform_epoch:
            selection = self.uniform.pick(candidates, outputs, generator)
        else:
            selection = self.choose(scores, generator)
        selection.scalars[f"{self.score_name}_selected"] = scores[selection.positions].mean()
        selection.scalars[f"{self.score_name}_candidates"] = scores.mean()
        return selection


def training_loss(candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
    """CE of the candidate forward's logits [n_B, C] at the observed labels -> [n_B]."""
    assert outputs is not None, "this method needs the candidate forward"
    return F.cross_entropy(outputs.logits, candidates.labels, reduction="none")


def grad_norm_bound(candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
    """‖softmax(f) − onehot(y)‖₂ [n_B]: the last-layer gradient norm up to ‖features‖."""
    assert outputs is not None, "this method needs the candidate forward"
    probs = torch.softmax(outputs.logits, dim=1)
    onehot = F.one_hot(candidates.labels, probs.shape[1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1)


def il_loss(il_logprobs: ZeroShotTable | LabelColumn, candidates: Candidates) -> torch.Tensor:
    """−log p_IL(y|x) [n_B] from the lookup [N, C] at the candidates' indices and labels."""
    return -il_logprobs.label_logprob(candidates.indices, candidates.labels).float()


def sampling_probs(bound: torch.Tensor, floor: float) -> torch.Tensor:
    """p ∝ bound + floor [n_B]."""
    mass = bound + floor
    return mass / mass.sum()


@register_selector("train_loss")
class TrainLoss(ScoreSelector):
    score_name = "loss"

    def scores(self, candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
        return training_loss(candidates, outputs)


@register_selector("grad_norm")
class GradNorm(ScoreSelector):
    score_name = "grad_norm"

    def scores(self, candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
        return grad_norm_bound(candidates, outputs)


@register_selector("grad_norm_is")
class GradNormIS(GradNorm):
    """Importance sampling: E over draws of weight·loss equals the plain mean over all n_B."""

    FLOOR: ClassVar[float] = 1e-8  # keeps p a distribution when every bound is 0

    def choose(self, scores: torch.Tensor, generator: torch.Generator) -> Selection:
        p = sampling_probs(scores, self.FLOOR)
        positions = torch.multinomial(p, self.n_selected, replacement=True, generator=generator)
        weights = 1.0 / (p.shape[0] * p[positions])
        return Selection(positions, weights=weights)


class UsesIrreducibleLoss(ScoreSelector):
    """A method with the IL model's log-probs, ``il_logprobs`` [N, C] by global index (a
    :class:`~bdsel.table.ZeroShotTable` or a tensor, at T = 1, or the observed labels'
    :class:`~bdsel.table.LabelColumn`)."""

    requires = ("il_logprobs",)

    def __init__(
        self,
        n_selected: int,
        *,
        il_logprobs: ZeroShotTable | LabelColumn | torch.Tensor,
        warmup_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(n_selected, warmup_epochs=warmup_epochs, seed=seed)
        self.il_logprobs = as_lookup(il_logprobs, "il_logprobs")
        self.n_rows, self.n_classes = self.il_logprobs.n_rows, self.il_logprobs.n_classes


@register_selector("irreducible_loss")
class IrreducibleLoss(UsesIrreducibleLoss):
    needs_forward = False
    score_name = "il_loss"
    lowest = True

    def scores(self, candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
        return il_loss(self.il_logprobs, candidates)


@register_selector("rho_loss")
class RhoLoss(UsesIrreducibleLoss):
    """Reducible holdout loss: training loss minus irreducible loss."""

    score_name = "rho"

    def scores(self, candidates: Candidates, outputs: ForwardOutputs | None) -> torch.Tensor:
        return training_loss(candidates, outputs) - il_loss(self.il_logprobs, candidates)
