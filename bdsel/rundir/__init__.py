"""The run-directory format: what ``bdsel train`` writes, and the one way to read it back.

    config.yaml     the resolved config (after overrides)
    metrics.jsonl   one JSON object per evaluation
    checkpoint.pt   latest state: model, optimizer, selector, epoch, step, timers
    summary.json    final numbers
    tb/             TensorBoard event files (the scalars of metrics.jsonl)

Every file but metrics.jsonl is written atomically (temporary file in the same directory,
fsync, rename), so a crash or Ctrl-C leaves the previous version intact. metrics.jsonl is
appended a whole line at a time and readers skip a partial last line.

A record's accuracy key names the split it was measured on (``test_acc``, or ``val_acc`` where
``data.validation_fraction`` makes a validation split); :func:`acc_key` is the one place that
mapping lives (``bdsel.targets`` reads records for the epochs and seconds to a target accuracy).

This module is torch-free, so the report, the benchmarks and any script can read runs
without importing torch; saving and loading the checkpoint itself is in ``bdsel.rundir.writer``.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bdsel.config import read_yaml_mapping

CONFIG, METRICS, CHECKPOINT, SUMMARY = (
    "config.yaml",
    "metrics.jsonl",
    "checkpoint.pt",
    "summary.json",
)
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, SUMMARY)
TENSORBOARD_DIR = "tb"  # TensorBoard event files: the scalars of metrics.jsonl, by step


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked."""


class MetricsOrderError(RunDirError):
    """metrics.jsonl repeats an epoch or goes back: two trainers wrote into one directory, or
    records were appended from elsewhere. Its numbers cannot be trusted."""


class DiskFullError(RunDirError):
    """No space left while writing ``path``; the message says what is still intact."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = Path(path)


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota: an OSError's errno, or the text HDF5 puts in the message of the
    OSError or RuntimeError h5py raises."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, OSError | RuntimeError) and any(
        text in str(exc) for text in ("No space left on device", "Disk quota exceeded")
    )


# ----------------------------------------------------------------------------- metric keys


def metric_prefix(split: str) -> str:
    """The evaluation split (``Config.eval_split``) -> the prefix of its record keys: test ->
    test, validation -> val."""
    if split == "test":
        return "test"
    if split == "validation":
        return "val"
    raise ValueError(f"unknown evaluation split {split!r}; expected 'test' or 'validation'")


def acc_key(split: str) -> str:
    """The accuracy key of a metrics record (``test_acc`` / ``val_acc``)."""
    return f"{metric_prefix(split)}_acc"


# ----------------------------------------------------------------------------- writing


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync, rename;
    DiskFullError when the disk is full (``path`` then keeps its previous content, the
    temporary file is gone)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; runs and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(f"no space left on the device writing {path}", path) from exc
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a whole line, flushed to disk; on a full disk, DiskFullError and
    no partial line left behind."""
    with open(path, "ab") as f:
        size = f.tell()
        try:
            f.write((json.dumps(record) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            f.truncate(size)  # truncating frees space
            raise DiskFullError(f"no space left on the device writing {path}", path) from exc


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    append_jsonl(Path(run_dir) / METRICS, record)


# ----------------------------------------------------------------------------- reading


def is_run_dir(path: Path) -> bool:
    """A run directory holds at least its config and its metrics."""
    return (Path(path) / CONFIG).is_file() and (Path(path) / METRICS).is_file()


def read_jsonl(
    path: Path,
    check: Callable[[Any], str | None] | None = None,
    increasing: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Complete records of a JSON-lines file; a partial last line is skipped.

    ``check(record)`` returns a problem (e.g. a missing key) or None. ``increasing``: a key
    whose values must strictly increase from record to record (``"epoch"`` in
    metrics.jsonl); a repeat or a step back is a :class:`MetricsOrderError` naming the line.
    Returns (records, a note naming the skipped last line and why, or None). A bad line
    anywhere but last raises RunDirError naming the line. A missing file has no records.
    """
    path = Path(path)
    if not path.is_file():
        return [], None
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = [(i + 1, line) for i, line in enumerate(text.split("\n")) if line.strip()]
    records: list[dict[str, Any]] = []
    previous: tuple[int, Any] | None = None  # (line, value) of the last record's ``increasing``
    for k, (lineno, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg})"
        else:
            problem = "not a JSON object" if not isinstance(record, dict) else None
            if problem is None and check is not None:
                problem = check(record)
        if problem is None:
            if increasing is not None:
                value = record.get(increasing)
                previous = check_increasing(path, increasing, previous, lineno, value)
            records.append(record)
        elif k == len(lines) - 1:  # the last line of a file being written, or killed mid-write
            return records, f"line {lineno} is incomplete ({problem})"
        else:
            raise RunDirError(f"{path}: line {lineno} is {problem}")
    return records, None


def check_increasing(
    path: Path,
    key: str,
    previous: tuple[int, Any] | None,
    lineno: int,
    value: Any,
    *,
    prefix: str = "",
    consequence: str = "its numbers cannot be trusted",
) -> tuple[int, Any]:
    """(``lineno``, ``value``) when ``value`` comes after ``previous`` = (line, value) of the
    last record; a :class:`MetricsOrderError` naming both lines when it repeats or goes
    back (``prefix`` and ``consequence`` frame the message for the caller)."""
    if previous is not None and isinstance(value, int | float) and value <= previous[1]:
        how = "repeats" if value == previous[1] else "goes back to"
        raise MetricsOrderError(
            f"{prefix}{path}: line {lineno} {how} {key} {value} after {key} {previous[1]} (line "
            f"{previous[0]}): two runs wrote into this directory, or records were added to it; "
            f"{consequence}"
        )
    return (lineno, value)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The complete records of a run's metrics.jsonl (none if it has none yet); a repeated or
    decreasing epoch is a :class:`MetricsOrderError`."""
    return read_jsonl(Path(run_dir) / METRICS, increasing="epoch")[0]


def read_config(run_dir: Path) -> dict[str, Any]:
    """The saved config as a mapping; RunDirError if missing or not a YAML mapping."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CONFIG}")
    return read_yaml_mapping(path, RunDirError)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json, or None when there is none yet; RunDirError if it is not a JSON object."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(summary, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return summary


def has_summary(run_dir: Path) -> bool:
    """Whether the run finished (``train`` writes summary.json last)."""
    return (Path(run_dir) / SUMMARY).is_file()
