"""Selection inside the Hugging Face ``Trainer`` (``pip install bdsel[hf]``).

:class:`SelectionTrainer` is a ``transformers.Trainer`` whose ``compute_loss`` scores every
candidate of a batch with a no-grad forward, trains on the points the selector picks and
tells the selector what it trained on. The rest is the Trainer's: gradient accumulation
(each micro-batch is a candidate batch; the loss is its chosen points' mean, which the
Trainer divides by the accumulation steps), mixed precision (the training forward runs in
its autocast; the candidate forward in bdsel's), DDP, and checkpoints: each
``checkpoint-N/`` also holds the selector's state (``bdsel_selector.pt``), and
``train(resume_from_checkpoint=...)`` restores it, so a resumed run picks as the
uninterrupted one would.

Batches are dicts with the global indices under ``index_key``, the inputs under
``input_key`` and the observed labels under ``labels``; keep them with
``TrainingArguments(remove_unused_columns=False)``. The model's last ``nn.Linear`` (or
``layer``) must output the logits: true of the ``*ForImageClassification`` and
``*ForSequenceClassification`` heads. This trainer feeds the model one input tensor
(``input_key``); a text model's inputs are several (``input_ids``, ``attention_mask``),
which the chosen positions must index alike: such a model needs ``compute_loss`` extended to
pass them all to the candidate and training forwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from bdsel.forward import LastLayerHook
from bdsel.integrations import selected_loss
from bdsel.selection.base import Selector

SELECTOR_FILE = "bdsel_selector.pt"


class SelectionTrainer(Trainer):
    """A ``Trainer`` that trains on the points ``selector`` picks from each batch."""

    def __init__(
        self,
        *args: Any,
        selector: Selector,
        layer: str | None = None,
        index_key: str = "index",
        input_key: str = "pixel_values",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns: pass TrainingArguments(remove_unused_columns=False), "
                f"or the Trainer drops the batches' {index_key!r} the selector reads"
            )
        self.selector, self.index_key, self.input_key = selector, index_key, input_key
        self.hook = LastLayerHook(self.model, layer)
        # The loss is each micro-batch's chosen points' mean: let the Trainer average it over
        # the accumulation steps (it would not for a model whose forward takes loss kwargs).
        self.model_accepts_loss_kwargs = False
        self.add_callback(_SaveSelector(self))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        self.selector.set_epoch(int(self.state.epoch or 0))
        bare = self.accelerator.unwrap_model(model)
        key = self.input_key
        step = selected_loss(
            self.selector,
            self.hook,
            bare,
            inputs[self.index_key],
            inputs[key],
            inputs["labels"],
            forward=lambda x: model(**{key: x}),
            score=lambda x: bare(**{key: x}),
        )
        return (step.loss, {"logits": step.logits}) if return_outputs else step.loss

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        path = resume_from_checkpoint
        if path is True:
            path = get_last_checkpoint(self.args.output_dir)
        if path:
            saved = Path(path) / SELECTOR_FILE
            if not saved.is_file():
                raise ValueError(
                    f"resume_from_checkpoint: {path} holds no {SELECTOR_FILE}; it was not "
                    "written by a SelectionTrainer"
                )
            self.selector.load_state_dict(torch.load(saved, weights_only=False))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class _SaveSelector(TrainerCallback):
    """Writes the selector's state into each checkpoint folder the Trainer has just saved."""

    def __init__(self, trainer: SelectionTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            torch.save(self.trainer.selector.state_dict(), folder / SELECTOR_FILE)
