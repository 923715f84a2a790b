"""What every config module shares: the error, and the range checks a setting declares
beside its field (``RANGES`` of each settings dataclass)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what was expected."""


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE = "auto, cpu, cuda, cuda:N or mps"
POSITIVE_INT, POSITIVE_FLOAT, NON_NEGATIVE = "a positive int", "a positive float", "a float >= 0"
Range = tuple[Callable[[Any], bool], str]  # (test of a value, what it expects)


def positive(v: Any) -> bool:
    return v > 0


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    return lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high)


def is_device(v: str) -> bool:
    return bool(DEVICE_PATTERN.fullmatch(v))


# The ranges many settings share, as a RANGES entry holds them.
POSITIVE_INT_RULE: Range = (at_least(1), POSITIVE_INT)
POSITIVE_FLOAT_RULE: Range = (positive, POSITIVE_FLOAT)
NON_NEGATIVE_RULE: Range = (at_least(0), NON_NEGATIVE)
