"""The optimizers and learning-rate schedules a config names (``train.optimizer``,
``train.schedule``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bdsel.config import TrainConfig, checks


@dataclass
class StepScheduleSettings:
    """``train.*`` when train.schedule=step."""

    step_milestones: list[int] = field(default_factory=list)  # epochs at which the rate drops
    step_gamma: float = 0.1  # the factor at each milestone
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "step_gamma": (checks.positive, "a positive factor (the lr is multiplied by it)"),
        "step_milestones": (lambda v: all(m >= 0 for m in v), "epochs >= 0"),
    }  # fmt: skip


# train.schedule -> its own settings (none for a schedule without any)
SCHEDULE_SETTINGS: dict[str, type] = {"step": StepScheduleSettings}


def cosine_factor(step: int, total: int) -> float:
    """The cosine schedule's multiplier after ``step`` of ``total`` steps: 1 down to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    if cfg.schedule == "cosine":
        return cosine_factor(step, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":
        own = cfg.settings or StepScheduleSettings()
        passed = sum(step >= m * steps_per_epoch for m in own.step_milestones)
        return own.step_gamma**passed
    return 1.0


class EpochSchedule:
    """``train.schedule`` over the run's epochs, however many steps each one has.

    Every epoch moves the schedule on by one epoch over the steps it takes
    (:meth:`begin_epoch` says how many): a run whose epochs are shorter than the full data's
    (InfoBatch's pruned epochs, SVP's coreset) still reaches the schedule's end, a cosine
    rate 0, at its last step. InfoBatch's own example rebuilds its schedule every epoch from
    that epoch's length for the same reason. An epoch of ``steps_per_epoch`` steps is
    exactly the plain per-step schedule: after step j of epoch e the factor is
    ``lr_factor(e·n + j, cfg, n)``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
    ) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.epoch, self.epoch_steps, self.in_epoch = 0, max(1, steps_per_epoch), 0
        self._apply()

    def begin_epoch(self, epoch: int, n_steps: int) -> None:
        """Epoch ``epoch`` (0-based) takes ``n_steps`` optimizer steps."""
        self.epoch, self.epoch_steps, self.in_epoch = epoch, max(1, n_steps), 0
        self._apply()

    def step(self) -> None:
        """After an optimizer step: the rate for the next one."""
        self.in_epoch += 1
        self._apply()

    def factor(self) -> float:
        n = self.epoch_steps
        return lr_factor(self.epoch * n + self.in_epoch, self.cfg, n)

    def _apply(self) -> None:
        factor = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lrs": list(self.base_lrs),
            "epoch": self.epoch,
            "epoch_steps": self.epoch_steps,
            "in_epoch": self.in_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.epoch, self.epoch_steps = state["epoch"], state["epoch_steps"]
        self.in_epoch = state["in_epoch"]
        self._apply()


SGD_MOMENTUM = 0.9  # train.optimizer=sgd: heavy-ball momentum, the usual value


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=SGD_MOMENTUM, weight_decay=cfg.weight_decay
    )
