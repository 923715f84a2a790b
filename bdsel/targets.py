"""Epochs and seconds to a target accuracy, read from a run's metrics records: the one rule
for "reached" (torch-free, as ``bdsel.rundir``)."""

from __future__ import annotations

import math
from typing import Any

# Accuracies are often computed in float32 (0.7 -> 0.69999998); 1e-6 is far below the
# resolution of any evaluation set (1 / N), so this only absorbs rounding.
REACH_TOLERANCE = 1e-6


def first_reaching(
    records: list[dict[str, Any]], target: float, key: str = "test_acc"
) -> dict[str, Any] | None:
    """The first record whose ``key`` reaches ``target`` (within REACH_TOLERANCE), or None."""
    return next((r for r in records if float(r[key]) >= target - REACH_TOLERANCE), None)


def uniform_targets(finals: list[float]) -> list[float]:
    """Target accuracies chosen as RHO-LOSS chose them, from uniform selection alone: its mean
    final accuracy (``finals``, one per seed) rounded down to a whole percent, and 5 points
    under it. Returns ``[lower, higher]``."""
    if not finals:
        raise ValueError("uniform_targets: no final accuracies")
    high = math.floor(100 * sum(finals) / len(finals) + 1e-9) / 100  # 0.87 stays 87%
    return [round(high - 0.05, 2), round(high, 2)]


def epochs_to_target(
    records: list[dict[str, Any]], target: float, key: str = "test_acc"
) -> int | None:
    """First record's ``epoch`` whose ``key`` reaches ``target`` (within REACH_TOLERANCE)."""
    record = first_reaching(records, target, key)
    return None if record is None else int(record["epoch"])


def seconds_to_target(
    records: list[dict[str, Any]], target: float, key: str = "test_acc"
) -> float | None:
    """Training wall-clock (``wall_s``: selection included, evaluation excluded) at the first
    record whose ``key`` reaches ``target``; None when none does or the record has no time."""
    record = first_reaching(records, target, key)
    seconds = None if record is None else record.get("wall_s")
    return None if seconds is None else float(seconds)
