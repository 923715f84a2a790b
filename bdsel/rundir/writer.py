"""The writer of a run directory, as ``train`` uses it: prepare it, append metrics, save and
load the checkpoint (torch), write the summary. The format itself (file names, reading,
atomic writes, metric keys) is the package's torch-free ``__init__`` (:mod:`bdsel.rundir`).

A resume checks metrics.jsonl against the checkpoint (:func:`check_metrics_for_resume`) and
rewrites it with the records of epochs 1..checkpoint epoch; a finished run is never resumed
(:meth:`RunDir.finished_summary`). A full disk is a :class:`DiskFullError` that names the
file and what is still intact.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from bdsel import rundir
from bdsel.config import Config, dump_config
from bdsel.locking import LOCK_FILE, ExclusiveLock
from bdsel.rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RUN_FILES,
    SUMMARY,
    TENSORBOARD_DIR,
    DiskFullError,
    RunDirError,
    atomic_write_bytes,
    atomic_write_text,
    check_increasing,
    is_disk_full,
    read_jsonl,
)
from bdsel.tensorboard import TensorBoardLog

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "RUN_FILES",
    "SUMMARY",
    "DiskFullError",
    "RunDir",
    "RunDirError",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_disk_full",
    "read_jsonl",
]


def evaluated_epochs(last_epoch: int, total_epochs: int, every: int) -> list[int]:
    """The epochs in 1..``last_epoch`` that write a metrics record (every ``every``-th, the last)."""
    return [e for e in range(1, last_epoch + 1) if e % every == 0 or e == total_epochs]


@dataclass
class MetricsCheck:
    """metrics.jsonl read against a checkpoint: what a resume keeps, and what was lost."""

    records: list[dict[str, Any]]  # whole records of the expected epochs, in epoch order
    lost: list[int]  # expected epochs without a whole record
    damaged_lines: list[int] = field(default_factory=list)  # 1-based; not a whole JSON record
    unexpected: list[int] = field(default_factory=list)  # epochs <= checkpoint that write none
    rebuilt: list[int] = field(default_factory=list)  # lost epochs rebuilt from the checkpoint

    def rebuild(self, record: dict[str, Any]) -> None:
        """Put back the record of a lost epoch (rebuilt from the checkpoint's state)."""
        epoch = record["epoch"]
        self.lost.remove(epoch)
        self.rebuilt.append(epoch)
        self.records = sorted([*self.records, record], key=lambda r: r["epoch"])

    def report(self, path: Path) -> str | None:
        """One line on what was damaged, rebuilt and lost; None when nothing was."""
        parts = []
        if self.damaged_lines:
            parts.append(f"line(s) {_numbers(self.damaged_lines)} of {path} were not whole records")
        if self.unexpected:
            parts.append(f"dropped records of epoch(s) {_numbers(self.unexpected)} (not evaluated)")
        if self.rebuilt:
            parts.append(
                f"rebuilt epoch(s) {_numbers(self.rebuilt)} from the checkpoint (accuracy and "
                "loss evaluated again; train loss and noise among selected are lost)"
            )
        if self.lost:
            parts.append(f"the records of epoch(s) {_numbers(self.lost)} are lost for good")
        return "; ".join(parts) or None


def _numbers(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


RESUME_REFUSED = "it cannot be resumed safely. Start the run again with --overwrite"


def check_metrics_for_resume(
    path: Path, checkpoint_epoch: int, total_epochs: int, every: int
) -> MetricsCheck:
    """Check ``path`` (metrics.jsonl) against a checkpoint written after ``checkpoint_epoch``.

    The records must run over :func:`evaluated_epochs` up to the checkpoint's epoch, every line
    whole. Records after it are dropped silently (written before a kill that came ahead of
    their checkpoint; the resume writes them again); anything else is named in ``report``.
    A repeated or decreasing epoch is a :class:`MetricsOrderError`: two trainers wrote here.
    """
    expected = evaluated_epochs(checkpoint_epoch, total_epochs, every)
    lines = path.read_bytes().split(b"\n") if path.is_file() else []
    by_epoch: dict[int, dict[str, Any]] = {}
    damaged, unexpected = [], []
    last: tuple[int, int] | None = None  # (line, epoch) of the last whole record
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            damaged.append(i + 1)
            continue
        last = check_increasing(path, "epoch", last, i + 1, epoch, prefix="--resume: ",
                                consequence=RESUME_REFUSED)  # fmt: skip
        if epoch > checkpoint_epoch:
            continue
        if epoch not in expected:
            unexpected.append(epoch)
        else:
            by_epoch[epoch] = record
    lost = [e for e in expected if e not in by_epoch]
    records = [by_epoch[e] for e in expected if e in by_epoch]
    return MetricsCheck(records, lost, damaged, unexpected)


def resume_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed, with what to do instead; None when it can."""
    path = Path(path)
    if (path / CHECKPOINT).is_file():
        return None
    if not path.is_dir():
        return f"--resume: {path} does not exist; start the run without --resume"
    if (path / CONFIG).is_file():
        return (
            f"--resume: {path} has no {CHECKPOINT} yet (the run stopped before its first epoch "
            "ended): nothing to resume; start it again with --overwrite"
        )
    return f"--resume: {path} holds no run; start the run without --resume"


def lock_rundir(path: Path, mode: str) -> ExclusiveLock:
    """Take ``path``'s lock (``<path>/.lock``) before anything in it is written or deleted:
    a second trainer on the same directory, ``--overwrite`` included, stops with
    :class:`LockedError` naming the holder. A new run's directory is created for it."""
    path = Path(path)
    if mode == "resume":
        if (problem := resume_problem(path)) is not None:
            raise RunDirError(problem)
    else:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror}") from exc
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
    try:
        return ExclusiveLock(path / LOCK_FILE, f"run directory {path}", command).acquire()
    except OSError as exc:
        raise RunDirError(f"run directory {path} is not writable: {exc.strerror}") from exc


class RunDir:
    """One run's directory; create it with :meth:`prepare`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tensorboard: TensorBoardLog | None = None

    def start_tensorboard(self, resumed_at_step: int | None = None) -> None:
        """Write every metrics record to ``tb/`` too; on a resume, TensorBoard drops what a
        killed run logged after ``resumed_at_step`` (the checkpoint's step)."""
        purge = None if resumed_at_step is None else resumed_at_step + 1
        try:
            self.tensorboard = TensorBoardLog(self.path / TENSORBOARD_DIR, purge_step=purge)
        except OSError as exc:
            raise self._tensorboard_error(exc) from exc

    def check_tensorboard(self) -> None:
        """Before anything is written: ``tb/`` can be made (or is a directory) and written
        in; else a RunDirError naming it."""
        tb = self.path / TENSORBOARD_DIR
        try:
            if tb.exists() and not tb.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "it is not a directory")
            tb.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=tb, prefix=".probe"):
                pass
        except OSError as exc:
            raise self._tensorboard_error(exc) from exc

    def _tensorboard_error(self, exc: OSError) -> RunDirError:
        tb = self.path / TENSORBOARD_DIR
        if is_disk_full(exc):
            return DiskFullError(
                f"no space left on the device writing TensorBoard events in {tb}: "
                f"{self._resume_hint()}",
                tb,
            )
        if (self.path / CHECKPOINT).is_file():
            then = (
                f"make it writable; the last checkpoint in {self.path} is intact: continue "
                f"with: bdsel train --run-dir {self.path} --resume"
            )
        else:
            then = "make it a writable directory, then run again"
        return RunDirError(
            f"cannot write TensorBoard events in {tb}: {exc.strerror or exc}; {then}"
        )

    def close(self) -> None:
        if self.tensorboard is not None:
            log, self.tensorboard = self.tensorboard, None
            log.close()  # every event was written when it was added: nothing is lost here

    @classmethod
    def prepare(
        cls, path: Path, config: Config, mode: Literal["new", "resume", "overwrite"] = "new"
    ) -> RunDir:
        """Check the directory can be used as asked, before any work starts."""
        run = cls(path)
        existing = [n for n in RUN_FILES if (run.path / n).exists()]
        if mode == "resume":
            if (problem := resume_problem(run.path)) is not None:
                raise RunDirError(problem)
            saved = run.saved_config()
            if saved != config.to_dict():
                diff = _diff(saved, config.to_dict())
                raise RunDirError(
                    f"--resume: the config differs from the one saved in {run.path / CONFIG} "
                    f"({', '.join(diff[:5])}); resume with the saved config"
                )
            run._check_writable()
            run.check_tensorboard()
            run.remove_stale_temporaries()
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
        run.check_tensorboard()  # before a file of the old run is touched
        for name in existing:  # --overwrite: only the files a run writes
            (run.path / name).unlink()
        if mode == "overwrite":
            shutil.rmtree(run.path / TENSORBOARD_DIR, ignore_errors=True)
        run.remove_stale_temporaries()
        run._write(CONFIG, dump_config(config).encode())
        return run

    def _check_writable(self) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".probe"):
                pass
        except OSError as exc:
            raise RunDirError(f"run directory {self.path} is not writable: {exc.strerror}") from exc

    def saved_config(self) -> dict[str, Any]:
        return rundir.read_config(self.path)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files a kill between write and rename left behind."""
        stale = [p for name in RUN_FILES for p in self.path.glob(f".{name}.*.tmp")]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def _resume_hint(self) -> str:
        if (self.path / CHECKPOINT).is_file():
            return (
                f"the last checkpoint in {self.path} is intact; free some space and continue "
                f"with: bdsel train --run-dir {self.path} --resume"
            )
        return "no checkpoint was written yet; free some space and start again with --overwrite"

    def _write(self, name: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.path / name, data)
        except DiskFullError as exc:
            raise DiskFullError(f"{exc}: {self._resume_hint()}", exc.path) from exc.__cause__

    # -- metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            rundir.append_metrics(self.path, record)
        except DiskFullError as exc:
            raise DiskFullError(f"{exc}: {self._resume_hint()}", exc.path) from exc.__cause__
        if self.tensorboard is not None:
            try:
                self.tensorboard.add(record)
            except OSError as exc:
                raise self._tensorboard_error(exc) from exc

    def check_metrics(self, checkpoint_epoch: int, total_epochs: int, every: int) -> MetricsCheck:
        return check_metrics_for_resume(self.path / METRICS, checkpoint_epoch, total_epochs, every)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with ``records`` (a resume's checked records)."""
        self._write(METRICS, "".join(json.dumps(r) + "\n" for r in records).encode())

    # -- checkpoint and summary

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.remove_stale_temporaries()
        buf = io.BytesIO()
        torch.save(state, buf)
        self._write(CHECKPOINT, buf.getvalue())

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        path = self.path / CHECKPOINT
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # torch raises several types for a damaged file
            raise RunDirError(f"{path}: cannot read checkpoint ({exc})") from exc

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write(SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
        self.remove_stale_temporaries()

    def finished_summary(self, config: Config) -> dict[str, Any] | None:
        """summary.json when this run is finished for ``config`` (summary complete, checkpoint
        at the last epoch, same saved config): such a run is never resumed nor rewritten."""
        path = self.path / SUMMARY
        if not (path.is_file() and (self.path / CHECKPOINT).is_file()):
            return None
        try:
            summary = json.loads(path.read_text())
            saved = self.saved_config()
        except (ValueError, RunDirError):
            return None
        if not isinstance(summary, dict) or summary.get("status") != "complete":
            return None
        if saved != config.to_dict():
            return None
        try:  # mmap: only the epoch is read, not gigabytes of weights
            ckpt = torch.load(self.path / CHECKPOINT, map_location="cpu", mmap=True,
                              weights_only=False)  # fmt: skip
        except Exception:  # a damaged checkpoint: the resume proper says what is wrong
            return None
        by_budget = summary.get("stopped_by_budget") is not None  # train.budget_s was spent
        return summary if by_budget or ckpt.get("epoch") == config.train.epochs else None

    def finished_damage(self, config: Config, epochs: int | None = None) -> str | None:
        """What is damaged in a finished run's metrics.jsonl (left as it is), or None.
        ``epochs``: the epochs it ran (fewer than train.epochs when its budget ended it)."""
        epochs = config.train.epochs if epochs is None else epochs
        check = self.check_metrics(epochs, epochs, config.eval.every)
        problem = check.report(self.path / METRICS)
        return None if problem is None else f"{problem}; summary.json holds the final numbers"


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
