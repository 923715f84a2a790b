"""Selection inside a LightningModule's training step (``pip install bdsel[lightning]``).

A Lightning ``Callback`` cannot replace a batch, so selection lives in the module::

    class Lit(SelectionMixin, L.LightningModule):  # the mixin first
        def __init__(self, model, selector):
            super().__init__()
            self.model = model
            self.use_selector(selector, model)

        def training_step(self, batch, batch_idx):  # batch: (indices, images, labels)
            return self.selected_loss(batch)

Each epoch starts with ``selector.set_epoch``; Lightning's checkpoints carry the selector's
state (its random stream included), so ``trainer.fit(..., ckpt_path=...)`` resumes it. Under
DDP the posterior's statistics are all-reduced over the ranks by ``observe`` itself. Override
``on_train_epoch_start``, ``on_save_checkpoint`` or ``on_load_checkpoint`` only with a call to
``super()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bdsel.forward import LastLayerHook
from bdsel.integrations import CHECKPOINT_KEY, selected_loss
from bdsel.selection.base import Selector


@dataclass
class _Selecting:
    selector: Selector
    model: nn.Module
    hook: LastLayerHook


class SelectionMixin:
    """Adds :meth:`use_selector` and :meth:`selected_loss` to a ``LightningModule``."""

    _bdsel: _Selecting | None = None

    def use_selector(self, selector: Selector, model: nn.Module, layer: str | None = None) -> None:
        """Select with ``selector`` from every training batch, scoring with ``model`` (the
        module's network; ``layer``: its logits layer, default the last ``nn.Linear``)."""
        self._bdsel = _Selecting(selector, model, LastLayerHook(model, layer))

    @property
    def selector(self) -> Selector:
        return self._selecting().selector

    def selected_loss(self, batch: Any) -> torch.Tensor:
        """The loss of the points the selector picks from ``batch`` = (global indices,
        inputs, labels); logs the selection's scalars as ``select/<name>``."""
        s = self._selecting()
        indices, inputs, labels = batch
        step = selected_loss(s.selector, s.hook, s.model, indices, inputs, labels)
        for name, value in step.selection.scalars.items():
            self.log(f"select/{name}", value.float(), on_step=True, on_epoch=False)  # type: ignore[attr-defined]
        return step.loss

    def _selecting(self) -> _Selecting:
        if self._bdsel is None:
            raise RuntimeError("call self.use_selector(selector, model) in __init__ first")
        return self._bdsel

    # -- Lightning's hooks

    def on_train_epoch_start(self) -> None:
        self._selecting().selector.set_epoch(self.current_epoch)  # type: ignore[attr-defined]
        super().on_train_epoch_start()  # type: ignore[misc]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self._selecting().selector.state_dict()
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise ValueError(
                f"the checkpoint holds no {CHECKPOINT_KEY!r}: it was not saved by a module "
                "with bdsel's SelectionMixin"
            )
        self._selecting().selector.load_state_dict(checkpoint[CHECKPOINT_KEY])
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
