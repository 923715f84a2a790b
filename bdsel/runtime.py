"""What every bdsel loop runs on: the device, per-(seed, epoch) random streams, a timer
that never syncs the host, and the progress bar of a training loop."""

from __future__ import annotations

import time
from typing import Any

import torch

from bdsel.config import ConfigError


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


PERMUTATION, AUGMENTATION, SELECTION = 0, 1, 2  # the streams of an epoch, by purpose


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
