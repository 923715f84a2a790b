"""The pieces every bdsel training loop uses: devices and precision, random streams,
optimizers and schedules, the candidate forward, evaluation, and a plain supervised fit.

``bdsel.train`` runs the selection loop with them; the hold-out (IL) predictor and SVP's
proxy train with :func:`fit_supervised`. Nothing here syncs the host inside a step.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bdsel.config import ConfigError, TrainConfig
from bdsel.data.batching import ImageSource
from bdsel.forward import autocast_for, batchnorm_batch_stats
from bdsel.selection.base import ForwardOutputs


def step_progress(console: Any = None) -> Any:
    """A rich progress bar for training loops: description, bar, steps, elapsed, remaining."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available on this machine; use auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name!r} but MPS is not available on this machine; use auto")
    return device


def stream_generator(
    seed: int, epoch: int, stream: int, device: torch.device, rank: int = 0
) -> torch.Generator:
    """An independent random stream per (seed, epoch, purpose, rank)."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch) * 16 + stream + rank * 7_919_000_003)
    return g


PERMUTATION, AUGMENTATION, SELECTION = 0, 1, 2


def cosine_factor(step: int, total: int) -> float:
    """The cosine schedule's multiplier after ``step`` of ``total`` steps: 1 down to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    if cfg.schedule == "cosine":
        return cosine_factor(step, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":
        passed = sum(step >= m * steps_per_epoch for m in cfg.step_milestones)
        return cfg.step_gamma**passed
    return 1.0


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def candidate_forward(
    model: nn.Module, inputs: torch.Tensor, autocast: Callable, bn_mode: str = "batch"
) -> ForwardOutputs:
    """No-grad forward over the candidates: float32 logits [n_B, C] and features [n_B, D]."""
    was_training = model.training
    ctx = batchnorm_batch_stats(model) if bn_mode == "batch" else contextlib.nullcontext()
    if bn_mode == "eval":
        model.eval()
    with torch.no_grad(), ctx, autocast():
        logits, features = model(inputs)
    model.train(was_training)
    return ForwardOutputs(logits=logits.float(), features=features.float())


class SectionTimer:
    """Accumulated time of a code section; CUDA events on the GPU, so timing never syncs."""

    def __init__(self, device: torch.device, total: float = 0.0) -> None:
        self.cuda = device.type == "cuda"
        self.total = total
        self._pending: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
        else:
            self.total += time.perf_counter() - self._start

    def seconds(self) -> float:
        """Total so far (syncs once on CUDA)."""
        if self._pending:
            torch.cuda.synchronize()
            self.total += sum(s.elapsed_time(e) for s, e in self._pending) / 1000.0
            self._pending.clear()
        return self.total


def evaluate(
    model: nn.Module,
    source: ImageSource,
    labels: torch.Tensor,
    batch_size: int,
    split: str = "test",
    rows: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on ``rows`` of ``split`` (default: all of it).

    ``labels`` are the rows' clean labels, aligned with ``rows``. One host sync at the end.
    """
    n = labels.shape[0]
    if rows is None:
        rows = torch.arange(n, device=source.device)
    logprobs = predict_logprobs(model, source, split, rows, batch_size)
    labels = labels.to(source.device)
    correct = (logprobs.argmax(1) == labels).sum()
    loss = -logprobs[torch.arange(n, device=source.device), labels].sum()
    return float(correct) / n, float(loss) / n


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
    progress: Any = None,
    description: str = "fit",
) -> nn.Module:
    """Plain minibatch training on ``indices`` (global, train split) with ``labels`` [N].

    For the models bdsel trains besides the selected one: the hold-out (IL) predictor and
    SVP's proxy. Returns the trained model in eval mode: with ``ema_decay`` > 0 the weight
    EMA's copy (as the main run evaluates), else ``model`` itself; with ``early_stopping``,
    at most ``epochs`` epochs and the weights of the best-scoring one. ``schedule``: "none"
    (the optimizer's rate throughout) or "cosine" (decayed to 0 over ``epochs`` epochs).
    ``on_batch(epoch, idx, logits)`` sees every training batch's global indices and detached
    logits of the online model (SVP counts forgetting events with it). ``progress``: a rich
    Progress.
    """
    from bdsel.evaluation import make_ema  # late: evaluation imports this module

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
    total_steps = epochs * steps_per_epoch
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))
        if schedule == "cosine"
        else None
    )
    best_state = None
    model.train()
    for epoch in range(epochs):
        g_perm = stream_generator(seed, epoch, PERMUTATION, device)
        g_aug = stream_generator(seed, epoch, AUGMENTATION, device)
        order = indices[torch.randperm(len(indices), device=device, generator=g_perm)]
        for idx, x in source.iter_batches("train", order, batch_size, generator=g_aug):
            with autocast():
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(model)
            if on_batch is not None:
                on_batch(epoch, idx, logits.detach())
        if task is not None:
            progress.update(task, completed=(epoch + 1) * steps_per_epoch)
        stop = early_stopping
        if stop is not None and (stop.patience > 0 or epoch + 1 == epochs):
            score = stop.score(result)
            result.train(result is model)  # scoring may switch modes; the online model trains
            stop.scores.append(score)
            stop.epochs_run = epoch + 1
            if score > stop.best_score:
                stop.best_score, stop.best_epoch = score, epoch + 1
                best_state = copy.deepcopy(result.state_dict())
            elif stop.patience and epoch + 1 - stop.best_epoch >= stop.patience:
                break
    if best_state is not None:
        result.load_state_dict(best_state)
    if task is not None:
        progress.update(task, completed=epochs * steps_per_epoch)
    model.eval()
    return result.eval()


@torch.no_grad()
def predict_logprobs(
    model: nn.Module, source: ImageSource, split: str, rows: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Eval-mode log-softmax of ``model`` on ``rows`` of ``split``: float32 [len(rows), C]."""
    was_training = model.training
    model.eval()
    autocast = autocast_for(source.device)
    out = []
    for _, x in source.iter_batches(split, rows.to(source.device), batch_size):
        with autocast():
            logits, _ = model(x)
        out.append(torch.log_softmax(logits.float(), dim=1))
    model.train(was_training)
    return torch.cat(out)
