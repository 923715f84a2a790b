"""The optimizers and learning-rate schedules a config names (``train.optimizer``,
``train.schedule``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bdsel.config import TrainConfig


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
