"""A run directory as ``train`` uses it: prepare it, append metrics, save and load the
checkpoint (torch), write the summary. The format itself (file names, reading, atomic
writes, metric keys) lives in the torch-free :mod:`bdsel.rundir`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from bdsel import rundir
from bdsel.config import Config, dump_config
from bdsel.rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RUN_FILES,
    SUMMARY,
    RunDirError,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
)

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "RUN_FILES",
    "SUMMARY",
    "RunDir",
    "RunDirError",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_jsonl",
]


class RunDir:
    """One run's directory; create it with :meth:`prepare`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def prepare(
        cls, path: Path, config: Config, mode: Literal["new", "resume", "overwrite"] = "new"
    ) -> RunDir:
        """Check the directory can be used as asked, before any work starts."""
        run = cls(path)
        existing = [n for n in RUN_FILES if (run.path / n).exists()]
        if mode == "resume":
            if not (run.path / CHECKPOINT).is_file():
                raise RunDirError(f"--resume: {run.path} has no {CHECKPOINT} to resume from")
            saved = run.saved_config()
            if saved != config.to_dict():
                diff = _diff(saved, config.to_dict())
                raise RunDirError(
                    f"--resume: the config differs from the one saved in {run.path / CONFIG} "
                    f"({', '.join(diff[:5])}); resume with the saved config"
                )
            run._check_writable()
            return run
        if existing and mode == "new":
            raise RunDirError(
                f"run directory {run.path} already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it or --overwrite to start again"
            )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {run.path}: {exc.strerror}") from exc
        run._check_writable()
        for name in existing:  # --overwrite: only the files a run writes
            (run.path / name).unlink()
        rundir.write_config_text(run.path, dump_config(config))
        return run

    def _check_writable(self) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".probe"):
                pass
        except OSError as exc:
            raise RunDirError(f"run directory {self.path} is not writable: {exc.strerror}") from exc

    def saved_config(self) -> dict[str, Any]:
        return rundir.read_config(self.path)

    # -- metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        rundir.append_metrics(self.path, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        return rundir.read_metrics(self.path)

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the records up to ``last_epoch`` (a resumed run rewrites what came after)."""
        kept = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        rundir.write_metrics(self.path, kept)

    # -- checkpoint and summary

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        path = self.path / CHECKPOINT
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # torch raises several types for a damaged file
            raise RunDirError(f"{path}: cannot read checkpoint ({exc})") from exc

    def write_summary(self, summary: dict[str, Any]) -> None:
        rundir.write_summary(self.path, summary)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
