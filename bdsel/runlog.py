"""The run directory: resolved config, metrics, checkpoint, summary.

    config.yaml     the resolved config (after overrides)
    metrics.jsonl   one JSON object per evaluation
    checkpoint.pt   latest state: model, optimizer, selector, epoch, step, timers
    summary.json    final numbers

Every file but metrics.jsonl is written atomically (temporary file in the same directory,
fsync, rename), so a crash or Ctrl-C leaves the previous version intact. metrics.jsonl is
appended a whole line at a time and readers skip a partial last line.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from bdsel.config import Config, dump_config

CONFIG, METRICS, CHECKPOINT, SUMMARY = (
    "config.yaml",
    "metrics.jsonl",
    "checkpoint.pt",
    "summary.json",
)
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, SUMMARY, "selection.h5")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Complete records of a JSON-lines file, and whether a partial last line was skipped."""
    if not path.is_file():
        return [], False
    records, partial = [], False
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the last line of a file being written
                partial = True
            else:
                raise RunDirError(f"{path}: line {i + 1} is not JSON") from None
    return records, partial


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
        atomic_write_text(run.path / CONFIG, dump_config(config))
        return run

    def _check_writable(self) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".probe"):
                pass
        except OSError as exc:
            raise RunDirError(f"run directory {self.path} is not writable: {exc.strerror}") from exc

    def saved_config(self) -> dict[str, Any]:
        path = self.path / CONFIG
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {CONFIG}")
        return yaml.safe_load(path.read_text())

    # -- metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / METRICS)[0]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the records up to ``last_epoch`` (a resumed run rewrites what came after)."""
        kept = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        atomic_write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))

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
        atomic_write_text(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
