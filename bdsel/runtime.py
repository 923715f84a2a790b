"""What every bdsel loop runs on: the device, per-(seed, epoch) random streams, a timer
that never syncs the host, and the progress bars of a training loop and of a cache's rows."""

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


class RowsBar:
    """A cache's rows on the console (``bdsel.cache.writer.RowsProgress``), as a context
    manager: one bar over both splits, with images per second; ``show=False`` keeps only the
    warnings."""

    def __init__(self, console: Any = None, show: bool = True) -> None:
        from rich import progress as rp
        from rich.console import Console
        from rich.text import Text

        class Rate(rp.ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{task.speed:,.0f} img/s" if task.speed else "- img/s", style="cyan")

        self.console, self.show = console or Console(), show
        self.bar = rp.Progress(
            rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
            Rate(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
            console=self.console, disable=not show,
        )  # fmt: skip
        self.task: Any = None

    def __enter__(self) -> RowsBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def discarding(self, part: Any, why: str) -> None:
        from rich.text import Text

        self.console.print(Text.assemble(("discarding unreadable partial cache", "yellow"),
                                         f" {part} ({why})"))  # fmt: skip

    def resuming(self, part: Any, done: int, todo: int) -> None:
        if self.show:
            self.console.print(f"resuming {part}: {done} rows done, {todo} to go", markup=False)

    def rows(self, split: str, n: int, todo: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("zero-shot", total=todo)
        self.bar.update(self.task, description=f"zero-shot {split}", advance=n)


def resolve_device(name: str, key: str = "device") -> torch.device:
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
