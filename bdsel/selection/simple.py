"""References that need no scores: ``uniform`` (n_b of n_B at random) and ``full`` (all n_B);
and ``WarmupSelector``, the base of methods that pick as ``uniform`` during warm-up epochs."""

from __future__ import annotations

import math

import torch

from bdsel.selection.base import (
    Candidates,
    ForwardOutputs,
    Selection,
    Selector,
    SelectorContext,
)
from bdsel.selection.registry import register_selector


@register_selector("uniform")
class Uniform(Selector):
    def select(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        n = candidates.indices.shape[0]
        perm = torch.randperm(n, device=candidates.indices.device, generator=generator)
        return Selection(positions=perm[: self.n_selected])


@register_selector("full")
class Full(Selector):
    """Ordinary training on every candidate: the reference without selection."""

    def select(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        n = candidates.indices.shape[0]
        return Selection(positions=torch.arange(n, device=candidates.indices.device))


class WarmupSelector(Selector):
    """Tracks the epoch; ``uniform_epoch`` is true in the epochs that pick as ``uniform``:
    before ``select.warmup_epochs``, and in the final ``select.anneal`` fraction of the run
    (InfoBatch's annealing: the last epochs see an unbiased sample of the data)."""

    def __init__(self, context: SelectorContext) -> None:
        super().__init__(context)
        s, epochs = context.config.select, context.config.train.epochs
        self.warmup_epochs = s.warmup_epochs
        self.anneal_start = epochs - round(s.anneal * epochs) if s.anneal > 0 else math.inf
        self.epoch = 0
        # Uniform picks delegate to uniform itself, so they match it draw for draw.
        self.uniform = Uniform(context)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def uniform_epoch(self) -> bool:
        return self.epoch < self.warmup_epochs or self.epoch >= self.anneal_start
