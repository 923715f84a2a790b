"""bdsel inside the trainers people use.

- :mod:`bdsel.integrations.lightning`: a LightningModule mixin (``pip install bdsel[lightning]``);
- :mod:`bdsel.integrations.hf`: a Hugging Face ``Trainer`` (``pip install bdsel[hf]``).

Both run :func:`selected_loss`, the plain loop's selecting step (docs/library.md) in one call,
and keep the selector's state in the framework's own checkpoints. Neither framework is
imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bdsel.contracts import Selection
from bdsel.forward import LastLayerHook, scoring
from bdsel.selection.base import Selector

CHECKPOINT_KEY = "bdsel_selector"  # the selector's state_dict() inside a framework checkpoint


@dataclass
class SelectedStep:
    """One selecting step: the chosen points' (weighted) mean loss to back-propagate, the
    selection, and the chosen points' training logits."""

    loss: torch.Tensor
    selection: Selection
    logits: torch.Tensor


def selected_loss(
    selector: Selector,
    hook: LastLayerHook,
    model: nn.Module,
    indices: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    forward: Callable[[torch.Tensor], Any] | None = None,
    score: Callable[[torch.Tensor], Any] | None = None,
) -> SelectedStep:
    """The candidate forward (when the selector reads it) over a batch of candidates, the
    selector's choice, the training forward on the chosen points, their cross-entropy, and
    ``observe``.

    ``model`` is the bare model ``hook`` watches (its last ``nn.Linear`` gives the logits and
    features); ``forward`` the training forward (a DDP-wrapped model, or a call with keyword
    inputs; default ``model``); ``score`` the no-grad candidate forward (default ``model``:
    the bare one, so a DDP wrapper broadcasts nothing). Both are called with the inputs and
    may return anything: the logits are read from the hook. ``indices`` are global indices
    (rows of the selector's tables), ``labels`` the observed labels.
    """
    forward = model if forward is None else forward
    score = model if score is None else score
    if selector.wants_forward():
        with scoring(model):
            score(inputs)
        selection = selector.select(indices, labels, *hook.take())
    else:
        selection = selector.select(indices, labels)
    pos = selection.positions
    forward(inputs[pos])
    logits, features = hook.take()
    losses = F.cross_entropy(logits.float(), labels[pos], reduction="none")
    weights = selection.weights
    loss = losses.mean() if weights is None else (losses * weights).mean()
    selector.observe(indices[pos], labels[pos], logits, features)
    return SelectedStep(loss, selection, logits)
