"""InfoBatch (Qin et al., ICLR 2024): prune well-learned samples at random, rescale the rest,
train on the full data at the end. A peer users would pick instead of batch selection.

Per sample a score, its latest training loss (3 before it was first trained on; stale while
it is pruned). At the start of every pruning epoch, among the samples whose score is below
the mean ("well learned") a random ``prune_ratio`` is dropped for that epoch, and the kept
ones among them get loss weight 1 / keep_ratio (keep_ratio = 1 − prune_ratio, clipped to
[0.1, 1]); samples at or above the mean are all kept with weight 1. Pruning runs in the
epochs ``e + 1 <= delta · epochs`` (0-based): floor(delta · epochs) of them, as InfoBatch's
sampler counts (it resets once when it is made, so its first epoch is its second reset, and
it prunes while that count is at most delta · epochs). After them every sample is trained
on with weight 1 (the annealing that removes the pruning's bias; the original code keeps the
last pruned epoch's weights there unless delta · epochs is a whole number, which its paper
does not describe).

In bdsel's loop that is an epoch plan, not a per-step choice: :meth:`epoch_order` returns the
epoch's kept samples in random order, the loop cuts them into batches of ``n_candidates``,
and :meth:`select` trains on the whole batch with the kept samples' weights. No candidate
forward; the scores come from the training forward (:meth:`observe`), all-gathered under
torch.distributed so that every rank prunes the same way. An epoch has fewer steps while
pruning, as in InfoBatch itself: that is where its saving comes from.

Randomness, from the epoch's generator, in this order: ``k = int(keep_ratio · n_wl)`` kept
well-learned samples are the first k of ``randperm(n_wl)`` over the well-learned indices in
ascending order; the epoch's order is ``randperm`` over [the other samples ascending, then the
kept ones in that draw's order]. The same generator on every rank gives the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bdsel.config import checks
from bdsel.distributed import all_gather_cat
from bdsel.selection.base import Candidates, ForwardOutputs, Selection, Selector
from bdsel.selection.registry import register_selector

INITIAL_SCORE = 3.0  # InfoBatch's: above any well-learned loss, so every sample is seen first


def infobatch_plan(
    train_idx: torch.Tensor, scores: torch.Tensor, keep_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pruning epoch: (order int64 [m], weights float [m]) over the global indices
    ``train_idx`` given per-index ``scores`` [N] (see the module docstring for the draws)."""
    s = scores[train_idx]
    well = s < s.mean()
    well_idx, rest_idx = train_idx[well].sort().values, train_idx[~well].sort().values
    k = int(keep_ratio * len(well_idx))
    perm = torch.randperm(len(well_idx), device=train_idx.device, generator=generator)
    kept = well_idx[perm[:k]]
    pool = torch.cat([rest_idx, kept])
    weights = torch.cat([torch.ones(len(rest_idx)), torch.full((k,), 1.0 / keep_ratio)])
    order = torch.randperm(len(pool), device=train_idx.device, generator=generator)
    return pool[order], weights.to(train_idx.device)[order]


@dataclass
class InfobatchSettings:
    # InfoBatch (select.method=infobatch): each pruning epoch drops this share of the samples
    # whose last loss is below the mean, for the first ``delta`` of the epochs.
    prune_ratio: float = 0.5
    delta: float = 0.875  # the share of the epochs that prune
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "prune_ratio": (checks.within(0, 1, high_open=True), "a fraction in [0, 1)"),
        "delta": (checks.within(0, 1), "a fraction of the epochs in [0, 1]"),
    }  # fmt: skip


@register_selector("infobatch")
class InfoBatch(Selector):
    """Args:
    n_rows: N, the size of the global index space (the training set's length).
    epochs: the run's epochs (pruning stops after ``delta`` of them).
    prune_ratio: the share of the well-learned samples dropped each pruning epoch.
    delta: the fraction of the epochs that prune.
    n_selected: unused (every sample of a batch is trained on); kept for the common
        interface.
    """

    Settings = InfobatchSettings

    def __init__(
        self,
        n_selected: int = 1,
        *,
        n_rows: int,
        epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        seed: int = 0,
    ) -> None:
        super().__init__(n_selected, seed=seed)
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio: expected a fraction in [0, 1), got {prune_ratio!r}")
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"delta: expected a fraction of the epochs in [0, 1], got {delta!r}")
        self.keep_ratio = min(1.0, max(0.1, 1.0 - prune_ratio))
        self.epochs, self.delta = int(epochs), float(delta)
        self.n_rows = int(n_rows)
        self.scores = torch.full((self.n_rows,), INITIAL_SCORE)
        self.weights = torch.ones(self.n_rows)  # this epoch's loss weight per global index
        self.epoch = 0
        self.pruned = 0  # samples left out of the current epoch

    @property
    def pruning(self) -> bool:
        return self.epoch + 1 <= self.delta * self.epochs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self, train_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        device = train_idx.device
        self.scores, self.weights = self.scores.to(device), torch.ones(self.n_rows, device=device)
        if not self.pruning:
            self.pruned = 0
            return super().epoch_order(train_idx, generator)
        order, weights = infobatch_plan(train_idx, self.scores, self.keep_ratio, generator)
        self.weights[order] = weights
        self.pruned = len(train_idx) - len(order)
        return order

    def pick(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        idx = candidates.indices
        positions = torch.arange(idx.shape[0], device=idx.device)
        weights = self.weights.to(idx.device)[idx] if self.pruning else None
        pruned = torch.tensor(float(self.pruned), device=idx.device)
        return Selection(positions, weights=weights, scalars={"pruned": pruned})

    def _observe(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        loss = F.cross_entropy(logits, labels, reduction="none")
        # float64 holds every index exactly; gathered [2 · ranks, m] -> [2, ranks · m]
        pairs = all_gather_cat(torch.stack([indices.double(), loss.double()]))
        pairs = torch.cat(pairs.split(2), dim=1)
        self.scores = self.scores.to(loss.device)
        self.scores[pairs[0].long()] = pairs[1].to(self.scores.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scores": self.scores.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scores = state["scores"].clone()
