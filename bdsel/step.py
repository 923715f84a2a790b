"""One training step, and the run it steps: the candidate forward a selector may read, the
selector's choice, then one forward/backward/optimizer step on the chosen points.

:class:`Stepper` holds what every step uses besides its candidates: the run, the scoring and
training forwards (compiled or DDP-wrapped, or the model itself) with their autocasts, the
selection timer and the statistics since the last evaluation. Nothing here syncs the host.
Each phase is labelled for torch.profiler (``bdsel/...``; benchmarks/bench_step.py
--profile prints the breakdown); a label costs about a microsecond when nothing profiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from bdsel.config import Config
from bdsel.contracts import Candidates, ForwardOutputs, Selection
from bdsel.data import RunData
from bdsel.data.batching import FolderImages, ImageSource
from bdsel.evaluation import WeightEMA
from bdsel.forward import batchnorm_batch_stats
from bdsel.models import Classifier
from bdsel.optim import EpochSchedule
from bdsel.runtime import SectionTimer
from bdsel.selection import Selector, shortlist


@dataclass
class Run:
    """Everything one training run holds, built from a config before any step is taken."""

    config: Config
    device: torch.device
    data: RunData
    source: ImageSource
    model: Classifier
    selector: Selector
    optimizer: torch.optim.Optimizer
    scheduler: EpochSchedule  # or any object with step() (benchmarks/bench_step.py)
    steps_per_epoch: int
    observed: torch.Tensor  # int64 [N] on the device
    noisy: torch.Tensor  # bool [N] on the device
    ema: WeightEMA | None  # the weight EMA (train.ema_decay > 0), on the rank that evaluates
    # candidates the forward scores once the selector has last scores (select.rescore; n_B
    # when it is off)
    n_rescored: int
    # what its caches cost before the first step (bdsel.predict.one_time_cost), carried
    # by every metrics record: the end-to-end clock starts at predictor_s
    one_time: dict[str, Any] = field(default_factory=dict)


def candidate_forward(model: nn.Module, inputs: torch.Tensor, autocast: Callable) -> ForwardOutputs:
    """No-grad forward over the candidates, batch-norm layers on the candidates' own batch
    statistics: float32 logits [n_B, C] and features [n_B, D]."""
    was_training = model.training
    with torch.no_grad(), batchnorm_batch_stats(model), autocast():
        logits, features = model(inputs)
    model.train(was_training)
    return ForwardOutputs(logits=logits.float(), features=features.float())


@dataclass
class EpochStats:
    """Device-side sums since the last evaluation."""

    loss_sum: torch.Tensor
    noisy_sum: torch.Tensor
    n_points: int
    scalars: dict[str, torch.Tensor]
    n_steps: int
    # Index (in n_steps) of the first step whose loss was NaN or Inf, -1 for none; read once
    # per epoch, so the step itself never syncs the host.
    first_nonfinite: torch.Tensor | None = None

    @classmethod
    def zeros(cls, device: torch.device) -> EpochStats:
        z = torch.zeros((), device=device)
        return cls(z.clone(), z.clone(), 0, {}, 0, torch.full((), -1, device=device))

    def state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum.cpu(),
            "noisy_sum": self.noisy_sum.cpu(),
            "n_points": self.n_points,
            "scalars": {k: v.cpu() for k, v in self.scalars.items()},
            "n_steps": self.n_steps,
        }

    def add(
        self,
        loss: torch.Tensor,
        losses: torch.Tensor,
        noisy: torch.Tensor,
        scalars: dict[str, torch.Tensor],
    ) -> None:
        """One step: its (weighted) mean loss, per-point losses and noisy flags, selector
        scalars. Remembers the first step whose loss is NaN or Inf, on the device."""
        bad = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(bad, self.n_steps, self.first_nonfinite)
        self.loss_sum += losses.sum()
        self.noisy_sum += noisy.sum()
        self.n_points += int(losses.shape[0])
        self.n_steps += 1
        for k, v in scalars.items():
            self.scalars[k] = self.scalars.get(k, 0) + v.detach().float()

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochStats:
        return cls(
            state["loss_sum"].to(device),
            state["noisy_sum"].to(device),
            state["n_points"],
            {k: v.to(device) for k, v in state["scalars"].items()},
            state["n_steps"],
            torch.full((), -1, device=device),  # a checkpoint is only written while finite
        )


@dataclass
class Stepper:
    """Steps one run: ``step(candidates, generator)`` per candidate batch, or ``epoch`` over
    an epoch's order. ``stats`` accumulates on the device until the loop reads and resets it."""

    run: Run
    score_forward: Callable  # the candidate forward's model (compiled, or the model)
    train_forward: Callable  # the training forward's (compiled and/or DDP-wrapped)
    score_autocast: Callable
    autocast: Callable
    timer: SectionTimer  # selection time
    stats: EpochStats = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.stats is None:
            self.stats = EpochStats.zeros(self.run.device)

    def step(self, candidates: Candidates, generator: torch.Generator) -> int:
        """Select from one candidate batch, take one optimizer step; returns the points trained on."""
        candidates, selection = self.choose(candidates, generator)
        return self.learn(candidates, selection, candidates.inputs[selection.positions])

    def epoch(
        self, order: torch.Tensor, generators: tuple[torch.Generator, torch.Generator]
    ) -> Iterator[int]:
        """Every step of one epoch over ``order`` in candidate batches; yields the points each
        trained on. ``generators``: the epoch's (augmentation, selection) streams.

        On folder data, when this epoch's selection reads no candidate forward, the epoch's
        choices are made first and only the chosen images are decoded (by the DataLoader's
        workers, prefetched): a step then decodes n_b images, not n_B."""
        run, (g_aug, g_sel) = self.run, generators
        n = run.config.select.n_candidates
        if isinstance(run.source, FolderImages) and not run.selector.wants_forward():
            chosen = []
            for start in range(0, len(order) - n + 1, n):
                idx = order[start : start + n]
                chosen.append(self.choose(Candidates(idx, None, run.observed[idx]), g_sel))
            picks = [c.indices[s.positions] for c, s in chosen]
            decoded = run.source.iter_index_batches("train", picks, generator=g_aug)
            for (candidates, selection), (_, x) in zip(chosen, decoded, strict=True):
                yield self.learn(candidates, selection, x)
            return
        batches = run.source.iter_batches("train", order, n, generator=g_aug, drop_last=True)
        for idx, inputs in batches:
            yield self.step(Candidates(idx, inputs, run.observed[idx]), g_sel)

    def choose(
        self, candidates: Candidates, generator: torch.Generator
    ) -> tuple[Candidates, Selection]:
        """The selection half of a step: shortlist by the last scores (``select.rescore``),
        candidate forward (when the method reads it), ``select``. Returns the candidates it
        chose from (fewer after a shortlist) and the choice."""
        run = self.run
        self.timer.start()
        logits = features = None
        if run.selector.wants_forward():
            if run.n_rescored < candidates.indices.shape[0]:
                last = run.selector.last_scores(candidates.indices)
                if last is not None:
                    with record_function("bdsel/shortlist"):
                        candidates = shortlist(candidates, last, run.n_rescored)
            with record_function("bdsel/candidate_forward"):
                scored = candidate_forward(
                    self.score_forward, candidates.inputs, self.score_autocast
                )
                logits, features = scored.logits, scored.features
        with record_function("bdsel/select"):
            idx, labels = candidates.indices, candidates.labels
            selection = run.selector.select(
                idx, labels, logits, features, generator=generator, inputs=candidates.inputs
            )
        self.timer.stop()
        return candidates, selection

    def learn(self, candidates: Candidates, selection: Selection, x: torch.Tensor) -> int:
        """The training half of a step on the chosen points' inputs ``x``: forward/backward,
        optimizer and EMA, ``observe``, statistics on the device. Returns the points trained
        on."""
        run = self.run
        with record_function("bdsel/train_forward_backward"):
            pos = selection.positions
            idx, y = candidates.indices[pos], candidates.labels[pos]
            with self.autocast():
                logits, features = self.train_forward(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            weights = selection.weights
            loss = (losses * weights).mean() if weights is not None else losses.mean()
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("bdsel/optimizer"):
            run.optimizer.step()
            run.scheduler.step()
        if run.ema is not None:
            with record_function("bdsel/ema_update"):
                run.ema.update(run.model)
        with record_function("bdsel/observe"):
            run.selector.observe(idx, y, logits, features)
        with record_function("bdsel/bookkeeping"):
            self.stats.add(loss.detach(), losses.detach(), run.noisy[idx], selection.scalars)
        return int(pos.shape[0])
