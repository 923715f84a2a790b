"""Reading run directories written by ``bdsel train`` for the report.

A run directory holds ``config.yaml`` (the resolved config) and ``metrics.jsonl``
(one JSON object per evaluation); its format and readers are :mod:`bdsel.rundir`.
A directory that is not a run but holds runs, at any depth, stands for all of them.
Runs still being written are read up to their last complete record.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bdsel import rundir
from bdsel.rundir import CONFIG as CONFIG_FILE
from bdsel.rundir import METRICS as METRICS_FILE
from bdsel.rundir import SUMMARY as SUMMARY_FILE
from bdsel.rundir import MetricsOrderError, RunDirError

SELECT_PREFIX = "select/"
# The end-to-end clock: a run's predictor_s (what its caches cost) + wall_s (its training).
END_TO_END = "e2e_s"


class ReportError(ValueError):
    """Run directories that cannot be reported; the message names the path and what was expected."""


def config_get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``config_get(cfg, "data.noise.rate")``; ``default`` when any part is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}`` with hashable values (lists become tuples)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


@dataclass
class RunRecord:
    """One run directory as the report reads it: its resolved config, its evaluation records, its summary if finished."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def method(self) -> str:
        return str(config_get(self.config, "select.method", "unknown"))

    @property
    def dataset(self) -> str:
        return str(config_get(self.config, "data.name", "unknown"))

    @property
    def noise_kind(self) -> str:
        kind = str(config_get(self.config, "data.noise.kind", "none"))
        return "none" if self.noise_rate == 0 else kind

    @property
    def noise_rate(self) -> float:
        if str(config_get(self.config, "data.noise.kind", "none")) == "none":
            return 0.0
        return float(config_get(self.config, "data.noise.rate", 0.0) or 0.0)

    @property
    def targets(self) -> list[float]:
        return [float(t) for t in config_get(self.config, "report.targets", []) or []]

    @property
    def planned_epochs(self) -> int | None:
        epochs = config_get(self.config, "train.epochs")
        return int(epochs) if isinstance(epochs, int) else None

    @property
    def complete(self) -> bool:
        return self.summary is not None and self.summary.get("status") == "complete"

    def column(self, key: str) -> np.ndarray:
        """The values of ``key`` over the records, float64 [n_records]; NaN where null/absent.
        ``e2e_s`` (END_TO_END): wall_s plus the run's predictor_s."""
        if key == END_TO_END:
            return self.column("wall_s") + self.predictor_s
        out = np.full(len(self.records), np.nan)
        for i, record in enumerate(self.records):
            value = record.get(key)
            if _is_number(value):
                out[i] = float(value)
        return out

    @property
    def epochs(self) -> np.ndarray:
        return self.column("epoch")

    @property
    def has_noise(self) -> bool:
        return bool(np.isfinite(self.column("selected_noisy_frac")).any())

    @property
    def select_keys(self) -> list[str]:
        keys = {k for record in self.records for k in record if k.startswith(SELECT_PREFIX)}
        return sorted(keys)

    @property
    def final_acc(self) -> float:
        return float(self.records[-1]["test_acc"])

    @property
    def best_acc(self) -> float:
        return float(np.nanmax(self.column("test_acc")))

    @property
    def epochs_run(self) -> int:
        return int(np.nanmax(self.epochs))

    @property
    def wall_s(self) -> float:
        return last_finite(self.column("wall_s"))

    @property
    def predictor_s(self) -> float:
        """What the caches it read cost before its first step (``predictor_s``): 0 for a run
        that reads none, NaN where that is not known (a cache or a run from before bdsel
        recorded it)."""
        recorded = last_finite(self.column("predictor_s"))
        if math.isfinite(recorded) or self.reads_cache:
            return recorded
        return 0.0

    @property
    def predictor_test_acc(self) -> float:
        """The zero-shot cache's own test accuracy as the run recorded it (NaN: none)."""
        return last_finite(self.column("predictor_test_acc"))

    @property
    def reads_cache(self) -> bool:
        """Whether the run read a zero-shot or cleaning cache before its first step."""
        return bool(config_get(self.config, "data.clean.cache")) or reads_zeroshot(self.method)

    @property
    def e2e_s(self) -> float:
        """The end-to-end clock at its last record: predictor seconds + training seconds."""
        return self.predictor_s + self.wall_s

    def acc_at_seconds(self, seconds: float, clock: str = "wall_s") -> float:
        """Test accuracy of the last evaluation after at most ``seconds`` on ``clock``
        (``wall_s``: training; ``e2e_s``: end to end), NaN when none came that early: where
        the run stood on that clock."""
        wall, acc = self.column(clock), self.column("test_acc")
        early = np.flatnonzero(wall <= seconds + 1e-9)
        return float(acc[early[-1]]) if len(early) else math.nan

    @property
    def selection_share(self) -> float:
        """selection_s / wall_s at the last record that has both (NaN when unknown)."""
        wall, sel = self.column("wall_s"), self.column("selection_s")
        ok = np.isfinite(wall) & np.isfinite(sel) & (wall > 0)
        if not ok.any():
            return math.nan
        i = int(np.flatnonzero(ok)[-1])
        return float(sel[i] / wall[i])


@functools.cache
def reads_zeroshot(method: str) -> bool:
    """Whether selection method ``method`` reads a zero-shot cache (its selector requires a
    per-index table); True for a name no longer registered, so nothing is hidden."""
    from bdsel.selection.registry import SELECTORS  # late: torch only when rows are built

    return method not in SELECTORS or bool(SELECTORS.get(method).requires)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def find_run_dirs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Expand ``paths`` to run directories (a directory of runs, at any depth, expands).

    Returns (run directories in argument order, each directory's runs sorted, no
    duplicates; warnings). Raises ReportError for a path that is missing, a file,
    or holds no run.
    """
    found: list[Path] = []
    warnings: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ReportError(f"{path}: no such directory (expected a run directory)")
        if not path.is_dir():
            raise ReportError(
                f"{path}: is a file; expected a run directory "
                f"(holding {CONFIG_FILE} and {METRICS_FILE}) or a directory of runs"
            )
        runs, half = _walk_runs(path)
        for d in half:
            warnings.append(f"{d}: has {CONFIG_FILE} but no {METRICS_FILE} yet; skipped")
        if not runs:
            hint = f" ({half[0]} has no {METRICS_FILE} yet)" if half else ""
            raise ReportError(
                f"{path}: not a run directory (expected {CONFIG_FILE} and {METRICS_FILE}) "
                f"and no run directories below it{hint}"
            )
        found.extend(runs)
    unique: dict[Path, Path] = {}
    for run in found:
        unique.setdefault(run.resolve(), run)
    return list(unique.values()), warnings


def _walk_runs(root: Path) -> tuple[list[Path], list[Path]]:
    """(run directories under root, directories with a config but no metrics yet)."""
    if rundir.is_run_dir(root):
        return [root], []
    runs: list[Path] = []
    half: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        if CONFIG_FILE in filenames and METRICS_FILE in filenames:
            runs.append(here)
            dirnames.clear()  # a run's subdirectories are its own files, not runs
        elif CONFIG_FILE in filenames:
            half.append(here)
    return runs, half


def _check_record(path: Path, record: dict[str, Any]) -> str | None:
    if "test_acc" not in record and "val_acc" in record:
        raise ReportError(
            f"{path}: this run measured accuracy on its validation split "
            "(data.validation_fraction > 0, a tuning run); the report compares test accuracy"
        )
    if not all(_is_number(record.get(k)) for k in ("epoch", "test_acc")):
        return "a record without numeric 'epoch' and 'test_acc'"
    return None


def read_run_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a metrics.jsonl file; a torn last line is dropped with a warning."""
    check = lambda r: _check_record(path, r)  # noqa: E731
    try:
        records, torn = rundir.read_jsonl(path, check=check, increasing="epoch")
    except MetricsOrderError as exc:
        raise ReportError(str(exc)) from None
    except RunDirError as exc:
        raise ReportError(
            f"{exc}; expected one JSON object per line with at least 'epoch' and 'test_acc'"
        ) from None
    warnings = []
    if torn is not None:
        # A run in progress, or killed while writing: the last line may be torn.
        warnings.append(
            f"{path}: {torn}; the run is in progress or was killed mid-write; "
            f"reporting its first {len(records)} records"
        )
    return records, warnings


def load_run(path: Path) -> tuple[RunRecord, list[str]]:
    """Read one run directory. Returns (run, warnings); raises ReportError if unreadable."""
    path = Path(path)
    if not rundir.is_run_dir(path):
        raise ReportError(
            f"{path}: not a run directory (expected {CONFIG_FILE} and {METRICS_FILE})"
        )
    try:
        config = rundir.read_config(path)
    except RunDirError as exc:
        raise ReportError(str(exc)) from None
    records, warnings = read_run_metrics(path / METRICS_FILE)
    try:
        summary = rundir.read_summary(path)
    except RunDirError as exc:
        warnings.append(f"{exc}; ignored")
        summary = None
    run = RunRecord(path=path, config=config, records=records, summary=summary)
    if records and not run.complete:
        warnings.append(f"{path}: no complete {SUMMARY_FILE}; the run is unfinished or running")
    return run, warnings


def load_runs(paths: list[Path]) -> tuple[list[RunRecord], list[str]]:
    """Expand ``paths`` and read every run; runs with no complete record are skipped."""
    dirs, warnings = find_run_dirs(paths)
    runs: list[RunRecord] = []
    for d in dirs:
        run, run_warnings = load_run(d)
        warnings.extend(run_warnings)
        if run.records:
            runs.append(run)
        else:
            warnings.append(f"{d}: {METRICS_FILE} has no complete record yet; skipped")
    if not runs:
        raise ReportError(
            "no run has a complete evaluation record yet: "
            + ", ".join(str(d) for d in dirs)
            + f" (expected at least one line in {METRICS_FILE})"
        )
    return runs, warnings
