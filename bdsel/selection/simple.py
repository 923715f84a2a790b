"""References that need no scores: ``uniform`` (n_b of n_B at random) and ``full`` (all n_B)."""

from __future__ import annotations

import torch

from bdsel.selection.base import Candidates, ForwardOutputs, Selection, Selector
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
