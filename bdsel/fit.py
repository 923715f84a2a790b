"""A plain supervised fit, for the models bdsel trains besides the selected one: the
hold-out (IL) predictor, the crossfit models and SVP's proxy."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdsel.config import checks
from bdsel.data.batching import ImageSource
from bdsel.evaluation import make_ema
from bdsel.forward import autocast_for
from bdsel.optim import cosine_factor
from bdsel.runtime import AUGMENTATION, PERMUTATION, stream_generator


@dataclass
class FitSettings:
    """A bdsel model a predictor trains (with the weight EMA) to its plateau: at most
    ``epochs``, stopping after ``patience`` epochs without a better score and keeping the
    best epoch (0: all epochs, the last kept and scored once)."""

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("model",)  # registered model names (bdsel.names)
    model: str = "small_cnn"  # a registered model
    epochs: int = 30  # at most
    patience: int = 3  # epochs without a better score before a stop
    optimizer: Literal["adamw", "sgd"] = "adamw"  # as train.optimizer
    lr: float = 1e-3  # learning rate
    weight_decay: float = 0.01  # as train.weight_decay
    batch_size: int = 128  # training batch size
    # cosine: the learning rate decays to 0 over ``epochs`` (a fixed budget reaches the
    # plateau in fewer epochs than a constant rate; early stopping still keeps the best).
    schedule: Literal["none", "cosine"] = "none"
    # a subclass's RANGES add to these (bdsel.config.check_ranges reads the class's and its bases')
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "epochs": checks.POSITIVE_INT_RULE,
        "patience": (checks.at_least(0), "an int >= 0 (0: no early stop)"),
        "lr": checks.POSITIVE_FLOAT_RULE,
        "weight_decay": checks.NON_NEGATIVE_RULE,
        "batch_size": checks.POSITIVE_INT_RULE,
    }  # fmt: skip


@dataclass
class EarlyStopping:
    """Stop a fit when ``score(model)`` (higher is better, e.g. accuracy on a calibration
    split) has not improved for ``patience`` epochs, and keep the best epoch's weights.
    ``patience`` 0: no early stop, every epoch runs and only the last is scored and kept.
    After the fit: ``best_epoch`` (1-based), ``best_score``, ``epochs_run``, ``scores``."""

    score: Callable[[nn.Module], float]
    patience: int
    best_epoch: int = 0
    best_score: float = -math.inf
    epochs_run: int = 0
    scores: list[float] = field(default_factory=list)
    best_state: dict[str, Any] | None = field(default=None, repr=False)  # the best weights

    def after_epoch(self, result: nn.Module, online: nn.Module, epoch: int, epochs: int) -> bool:
        """Score ``result`` after ``epoch`` (0-based) of ``epochs`` (every epoch with a
        patience, else the last only); True when the fit should stop."""
        if not (self.patience > 0 or epoch + 1 == epochs):
            return False
        score = self.score(result)
        result.train(result is online)  # scoring may switch modes; the online model trains
        self.scores.append(score)
        self.epochs_run = epoch + 1
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_state = copy.deepcopy(result.state_dict())
            return False
        return bool(self.patience and epoch + 1 - self.best_epoch >= self.patience)


def fit_supervised(
    model: nn.Module,
    source: ImageSource,
    indices: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    ema_decay: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    schedule: str = "none",
    on_batch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    progress: Any = None,
    description: str = "fit",
) -> nn.Module:
    """Plain minibatch training on ``indices`` (global, train split) with ``labels`` [N].
    Returns the trained model in eval mode: with ``ema_decay`` > 0 the weight EMA's copy (as
    the main run evaluates), else ``model`` itself; with ``early_stopping``, at most
    ``epochs`` epochs and the weights of the best-scoring one. ``schedule``: "none" or
    "cosine" (decayed to 0 over ``epochs`` epochs). ``on_batch(epoch, idx, logits)`` sees
    every batch's global indices and the online model's detached logits (SVP's forgetting
    events). ``loss(logits, labels)``: the training loss (the forward-corrected one of
    bdsel.data.noise_channel trains for the clean label). ``progress``: rich Progress."""
    device = source.device
    steps_per_epoch = -(-len(indices) // batch_size)
    task = (
        None if progress is None else progress.add_task(description, total=epochs * steps_per_epoch)
    )
    labels = labels.to(device)
    indices = indices.to(device)
    autocast = autocast_for(device)
    ema = make_ema(model, ema_decay)
    result = ema.module if ema is not None else model
    scheduler = _scheduler(optimizer, schedule, epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        g_perm = stream_generator(seed, epoch, PERMUTATION, device)
        g_aug = stream_generator(seed, epoch, AUGMENTATION, device)
        order = indices[torch.randperm(len(indices), device=device, generator=g_perm)]
        for idx, x in source.iter_batches("train", order, batch_size, generator=g_aug):
            with autocast():
                logits, _ = model(x)
            _optimizer_step(loss(logits.float(), labels[idx]), optimizer, scheduler)
            if ema is not None:
                ema.update(model)
            if on_batch is not None:
                on_batch(epoch, idx, logits.detach())
        if task is not None:
            progress.update(task, completed=(epoch + 1) * steps_per_epoch)
        if early_stopping is not None and early_stopping.after_epoch(result, model, epoch, epochs):
            break
    if early_stopping is not None and early_stopping.best_state is not None:
        result.load_state_dict(early_stopping.best_state)
    if task is not None:
        progress.update(task, completed=epochs * steps_per_epoch)
    model.eval()
    return result.eval()


def _scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int) -> Any | None:
    """The cosine decay to 0 over ``total_steps``, or None for a constant rate."""
    if schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps))


def _optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
