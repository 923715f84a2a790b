"""References that need no scores: ``uniform`` (n_b of n_B at random) and ``full`` (all n_B);
and ``WarmupSelector``, the base of methods that pick as ``uniform`` during warm-up epochs."""

from __future__ import annotations

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
    """Tracks the epoch; ``in_warmup`` is true before ``select.warmup_epochs``."""

    def __init__(self, context: SelectorContext) -> None:
        super().__init__(context)
        self.warmup_epochs = context.config.select.warmup_epochs
        self.epoch = 0
        # Warm-up picks delegate to uniform itself, so they match it draw for draw.
        self.uniform = Uniform(context)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs
