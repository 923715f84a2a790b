"""References that need no scores: ``uniform`` (n_b of n_B at random) and ``full`` (all n_B);
and ``WarmupSelector``, the base of methods that pick as ``uniform`` during warm-up epochs."""

from __future__ import annotations

import torch

from bdsel.selection.base import (
    Candidates,
    ForwardOutputs,
    Selection,
    Selector,
)
from bdsel.selection.registry import register_selector


@register_selector("uniform")
class Uniform(Selector):
    def pick(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        n = candidates.indices.shape[0]
        perm = torch.randperm(n, device=candidates.indices.device, generator=generator)
        return Selection(positions=perm[: self.n_selected])


@register_selector("full")
class Full(Selector):
    """Ordinary training on every candidate: the reference without selection."""

    def __init__(self, n_selected: int = 1, *, seed: int = 0) -> None:
        super().__init__(n_selected, seed=seed)  # every candidate is trained on

    def pick(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        n = candidates.indices.shape[0]
        return Selection(positions=torch.arange(n, device=candidates.indices.device))


class WarmupSelector(Selector):
    """Tracks the epoch; ``uniform_epoch`` is true in the epochs that pick as ``uniform``:
    those before ``warmup_epochs``."""

    def __init__(self, n_selected: int, *, warmup_epochs: int = 0, seed: int = 0) -> None:
        super().__init__(n_selected, seed=seed)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs: expected an int >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.epoch = 0
        # Uniform picks delegate to uniform itself, so they match it draw for draw.
        self.uniform = Uniform(n_selected)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def uniform_epoch(self) -> bool:
        return self.epoch < self.warmup_epochs
