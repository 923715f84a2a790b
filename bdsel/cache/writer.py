"""Writing a zero-shot cache (``bdsel.cache.format`` holds its format): a predictor's rows
in batches into ``<path>.partial``, resumable from the ``done`` flags, then its accuracy,
what the caller's ``finish`` step adds (the calibration), its cost, and the rename that makes
it complete. What it is doing goes to an optional :class:`RowsProgress` (no console here).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import h5py
import numpy as np
import torch

from bdsel.cache.format import (
    FORMAT_VERSION,
    READ_ROWS,
    REBUILD,
    SECONDS_ATTR,
    SPLITS,
    CacheError,
    bad_rows,
    dataset_fingerprint,
    fingerprint_problems,
    json_spec,
    missing_rows,
    open_cache,
    partial_path,
    read_attrs,
    read_rows,
    versions,
)
from bdsel.cache.stats import split_stats
from bdsel.rundir import is_disk_full

if TYPE_CHECKING:
    from bdsel.data import Dataset


class Predictor(Protocol):
    """What build_cache runs: a registered predictor (``bdsel.predictors.registry``) or any
    object with ``logprobs(split, rows)`` for rows of the dataset's "train"/"test" split."""

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor: ...
    def spec(self) -> dict[str, Any]: ...


class RowsProgress(Protocol):
    """Where build_cache says what it does (``bdsel.runtime.RowsBar`` draws it)."""

    def discarding(self, part: Path, why: str) -> None: ...  # an unreadable partial file
    def resuming(self, part: Path, done: int, todo: int) -> None: ...
    def rows(self, split: str, n: int, todo: int) -> None: ...  # n more rows written


# What a finish step stores: attrs from a reader of train rows' log-probs [n, C].
Finish = Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, Any]]


@dataclass
class CacheSummary:
    """What build_cache reports; accuracies are against the clean labels."""

    path: Path
    n_train: int
    n_test: int
    n_classes: int
    train_accuracy: float
    test_accuracy: float
    mean_clean_logprob: float
    seconds: float
    rows_computed: int = 0  # rows this call ran the predictor on (0: the cache was complete)
    temperature: float | None = None  # fitted on the predictor's calibration labels, if any
    # fitted with the labels' symmetric noise (calibration on observed labels), if any
    temperature_denoised: float | None = None
    label_noise_rate: float | None = None  # that fit's estimated share of wrong labels
    noise_model: str | None = None  # that fit's noise model: "symmetric" or "transition"
    predictor: dict[str, Any] | None = None  # the stored spec
    predictor_seconds: float | None = None  # what the cache cost, fitting included (SECONDS_ATTR)


def _file_bytes(fingerprint: dict, n_classes: int) -> int:
    """About how large a cache file is: its rows, done flags and 64 KiB for HDF5's metadata."""
    rows = fingerprint["n_train"] + fingerprint["n_test"]
    return rows * (4 * n_classes + 1) + (1 << 16)


def _disk_full_error(part: Path) -> CacheError:
    return CacheError(
        f"no space left on the device writing {part}: the rows written so far are kept; free "
        "some space and run the same bdsel cache-zeroshot command again to resume"
    )


def _reserve(part: Path, fresh: bool) -> None:
    """Allocate every block of ``part`` now, so that a full disk stops the build here, before
    HDF5 writes a row: HDF5 cannot close a file cleanly once a write has failed. A ``fresh``
    file (no row in it yet) is removed when there is no room for it."""
    try:
        fd = os.open(part, os.O_RDWR)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, max(os.fstat(fd).st_size, 1))
    except OSError as exc:
        if not is_disk_full(exc):
            return  # a file system without fallocate: the writes find out, later
        if not fresh:
            raise _disk_full_error(part) from None
        part.unlink(missing_ok=True)
        raise CacheError(
            f"no space left on the device for {part}; free some space and run the command again"
        ) from None
    finally:
        os.close(fd)


def _create(path: Path, fingerprint: dict, spec: dict, n_classes: int) -> None:
    """Create the empty cache at ``path``; CacheError (and no file) when the disk is full."""
    needed, free = _file_bytes(fingerprint, n_classes), shutil.disk_usage(path.parent).free
    if free < needed:
        raise CacheError(
            f"not enough space for {path}: it needs about {needed / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB are free there; free some space and run the command again"
        )
    try:
        _write_layout(path, fingerprint, spec, n_classes)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        # The new file holds nothing yet: give its blocks back, so that HDF5 can flush what it
        # still holds open when it lets go of it, and drop the file.
        os.truncate(path, 0)
        path.unlink(missing_ok=True)
        raise CacheError(
            f"no space left on the device creating {path}; free some space and run the "
            "command again"
        ) from None


def _write_layout(path: Path, fingerprint: dict, spec: dict, n_classes: int) -> None:
    # Storage is allocated at creation (contiguous, never filled: a sparse file), so later row
    # writes touch raw data only and never HDF5 metadata: a kill between flushes cannot leave
    # the file's structure half-written. ``_reserve`` then backs the holes with real blocks.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fingerprint"] = json.dumps(fingerprint)
        f.attrs["class_names"] = json.dumps(fingerprint["class_names"])
        f.attrs["predictor"] = json.dumps(spec, sort_keys=True)
        f.attrs["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.attrs["versions"] = json.dumps(versions(), sort_keys=True)
        f.attrs["complete"] = False
        for key in ("train_accuracy", "test_accuracy", "mean_clean_logprob"):
            f.attrs[key] = float("nan")
        for split in SPLITS:
            n = fingerprint[f"n_{split}"]
            g = f.create_group(split)
            g.create_dataset("logprobs", shape=(n, n_classes), dtype="<f4", dcpl=dcpl)
            g.create_dataset("done", data=np.zeros(n, dtype=bool))


def _existing_problem(path: Path, fingerprint: dict, spec: dict) -> tuple[str | None, dict]:
    """(why the file at ``path`` cannot serve this dataset and predictor or None, its attrs)."""
    with open_cache(path) as f:
        info = read_attrs(f, path)
        info["missing"] = missing_rows(f)
    problems = fingerprint_problems(info["fingerprint"], fingerprint)
    # A spec value of None is not known yet (a hold-out model's weights hash before it is
    # trained, when only a complete cache is being checked): any stored value matches it.
    stored = info["predictor"]
    diff = sorted(k for k in set(spec) | set(stored)
                  if not (k in spec and spec[k] is None) and spec.get(k) != stored.get(k))  # fmt: skip
    if diff:
        problems.append(f"the predictor differs in {', '.join(diff)}")
    return "; ".join(problems) or None, info


def _reset_invalid_done(ds: h5py.Dataset, done: np.ndarray) -> int:
    """Clear ``done`` for rows that are not finite, normalised log-probs (a crash's leftovers)."""
    reset = 0
    for start in range(0, len(done), READ_ROWS):
        mask = done[start : start + READ_ROWS]
        if not mask.any():
            continue
        bad = bad_rows(torch.from_numpy(ds[start : start + len(mask)])).numpy() & mask
        mask[bad] = False  # a view: updates ``done`` in place
        reset += int(bad.sum())
    return reset


def _check_output(out: torch.Tensor, n_rows: int, n_classes: int) -> np.ndarray:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n_rows, n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"predictor returned {got}, expected ({n_rows}, {n_classes})")
    arr = out.detach().to(torch.float32).cpu()
    if bad_rows(arr).any():
        raise ValueError("predictor returned rows that are not finite log-probabilities")
    return arr.numpy()


def _fill_split(f: h5py.File, split: str, predictor: Predictor, done: np.ndarray,
                batch_size: int, flush_every: int, advance: Callable[[int], None],
                clock: Callable[[], float]) -> int:  # fmt: skip
    """Run the predictor on every row of ``split`` not yet done; returns rows computed."""
    lp_ds, done_ds = f[split]["logprobs"], f[split]["done"]
    n_classes = lp_ds.shape[1]

    def commit() -> None:
        f.flush()  # the log-prob rows reach the OS before the flags that vouch for them
        done_ds[...] = done
        f.attrs[SECONDS_ATTR] = clock()  # a resumed cache adds its own to these
        f.flush()

    todo = np.flatnonzero(~done)
    pending = 0
    try:
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            arr = _check_output(
                predictor.logprobs(split, torch.from_numpy(rows)), len(rows), n_classes
            )
            if rows[-1] - rows[0] + 1 == len(rows):  # contiguous: one hyperslab write
                lp_ds[rows[0] : rows[-1] + 1] = arr
            else:
                lp_ds[rows] = arr
            done[rows] = True
            pending += 1
            advance(len(rows))
            if pending == flush_every:
                commit()
                pending = 0
    finally:
        if pending:  # also on Ctrl-C or a predictor error: keep the rows already computed
            commit()
    return len(todo)


def build_cache(
    path: str | Path,
    dataset: Dataset,
    predictor: Predictor,
    *,
    batch_size: int = 256,
    flush_every: int = 8,
    overwrite: bool = False,
    finish: Finish | None = None,
    fit_seconds: float = 0.0,
    progress: RowsProgress | None = None,
) -> CacheSummary:
    """Run ``predictor`` over every train and test image and write the cache at ``path``.

    ``finish(read)``: once every row is written, the attributes to store from the train
    rows' log-probs (``read(rows)`` -> [n, C]): the calibration, ``bdsel.calibration.
    calibration_attrs``, whose ``temperature`` ``zeroshot.temperature: auto`` reads. Its
    cost is recorded (SECONDS_ATTR: ``fit_seconds``, rows and finish, over a resume's
    sessions). ``progress``: told what it does.

    Resumes ``<path>.partial`` when it was made for the same dataset fingerprint and predictor
    spec; returns at once when ``path`` is already complete for them. A cache or partial file
    for another dataset or predictor is a CacheError unless ``overwrite`` (the old ``path``
    then stays until the new cache is complete).
    """
    if batch_size < 1 or flush_every < 1:
        raise ValueError(f"batch_size and flush_every must be >= 1 ({batch_size}, {flush_every})")
    t0 = time.perf_counter()
    path, part = Path(path), partial_path(path)
    fingerprint, spec = dataset_fingerprint(dataset), json_spec(predictor.spec())

    if path.exists() and not overwrite:
        info = _complete_info(path, fingerprint, spec)
        return _summary(path, fingerprint, info, t0, 0)
    _prepare_partial(part, fingerprint, spec, len(dataset.class_names), overwrite, progress)
    f = h5py.File(part, "r+")
    try:
        clock = _cost_clock(f, fit_seconds, t0)
        computed = _fill(f, part, predictor, (batch_size, flush_every), progress, clock)
        _write_stats(f, dataset, finish, clock)
        f.attrs["complete"] = True  # last: every row and statistic is already written
        f.flush()
        info = read_attrs(f, part)
        f.close()
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        _close_quietly(f)
        raise _disk_full_error(part) from None
    finally:
        _close_quietly(f)
    os.replace(part, path)  # atomic: ``path`` appears only complete
    return _summary(path, fingerprint, info, t0, computed)


def _cost_clock(f: h5py.File, fit_seconds: float, t0: float) -> Callable[[], float]:
    """The cache's cost so far: what earlier sessions recorded in ``f``, the fit before this
    call and the seconds since ``t0``."""
    before = float(f.attrs.get(SECONDS_ATTR, 0.0)) + fit_seconds
    return lambda: before + time.perf_counter() - t0


def _write_stats(
    f: h5py.File, dataset: Dataset, finish: Finish | None, clock: Callable[[], float]
) -> None:
    """Accuracies and the mean clean-label log-prob of the filled cache, what ``finish``
    adds and, once they are done, its cost so far (``clock()``)."""
    train_acc, train_lp = split_stats(f, "train", dataset.train.labels)
    test_acc, _ = split_stats(f, "test", dataset.test.labels)
    f.attrs["train_accuracy"] = train_acc
    f.attrs["test_accuracy"] = test_acc
    f.attrs["mean_clean_logprob"] = train_lp
    if finish is not None:
        read = lambda rows: read_rows(f["train"]["logprobs"], rows.cpu().long())  # noqa: E731
        for key, value in finish(read).items():
            f.attrs[key] = value
    f.attrs[SECONDS_ATTR] = clock()


def _complete_info(path: Path, fingerprint: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a complete cache made for this dataset and predictor; a CacheError
    for any other file at ``path``."""
    try:
        problem, info = _existing_problem(path, fingerprint, spec)
    except CacheError as exc:  # unreadable: truncated, or not HDF5 at all
        raise CacheError(f"{exc}; {REBUILD}") from exc
    if problem or info["missing"] or not info["complete"]:
        why = problem or "is incomplete"
        raise CacheError(f"{path} exists and {why}; {REBUILD}")
    return info


def _prepare_partial(
    part: Path,
    fingerprint: dict[str, Any],
    spec: dict[str, Any],
    n_classes: int,
    overwrite: bool,
    progress: RowsProgress | None,
) -> None:
    """A partial file to (re)fill: the one there when it was made for this dataset and
    predictor, else a new one (an unreadable one is discarded; another's is a CacheError
    unless ``overwrite``); its disk space reserved."""
    if part.exists() and overwrite:
        part.unlink()
    elif part.exists():
        try:
            problem, _ = _existing_problem(part, fingerprint, spec)
        except CacheError as exc:  # killed mid-write: nothing in it can be trusted
            if progress is not None:
                progress.discarding(part, str(exc))
            part.unlink()
        else:
            if problem:
                raise CacheError(f"{part} (an unfinished cache) {problem}; {REBUILD}")
    fresh = not part.exists()
    if fresh:
        _create(part, fingerprint, spec, n_classes)
    _reserve(part, fresh)


def _fill(
    f: h5py.File,
    part: Path,
    predictor: Predictor,
    sizes: tuple[int, int],
    progress: RowsProgress | None,
    clock: Callable[[], float],
) -> int:
    """Compute every row not done yet, split by split; returns how many. ``sizes``: (batch
    size, batches per flush); ``clock()``: the cache's seconds so far, stored with every
    commit."""
    done = {s: f[s]["done"][...].astype(bool) for s in SPLITS}
    for s in SPLITS:
        _reset_invalid_done(f[s]["logprobs"], done[s])
    todo = sum(int((~d).sum()) for d in done.values())
    resumed = sum(len(d) for d in done.values()) - todo
    if resumed and progress is not None:
        progress.resuming(part, resumed, todo)
    computed = 0
    for s in SPLITS:
        advance = (lambda k, s=s: progress.rows(s, k, todo)) if progress else (lambda k: None)
        computed += _fill_split(f, s, predictor, done[s], *sizes, advance, clock)
    return computed


def _close_quietly(f: h5py.File) -> None:
    """Close ``f``; after a failed write HDF5 cannot flush, and its complaint is not news."""
    try:
        if f.id.valid:
            f.close()
    except (OSError, RuntimeError):
        pass


def _summary(path: Path, fp: dict, info: dict, t0: float, computed: int) -> CacheSummary:
    stats = {k: float(info[k]) for k in ("train_accuracy", "test_accuracy", "mean_clean_logprob")}
    n_classes, seconds = len(fp["class_names"]), time.perf_counter() - t0
    return CacheSummary(path, fp["n_train"], fp["n_test"], n_classes, **stats, seconds=seconds,
                        rows_computed=computed, temperature=info.get("temperature"),
                        temperature_denoised=info.get("temperature_denoised"),
                        label_noise_rate=info.get("label_noise_rate"),
                        noise_model=info.get("noise_model"),
                        predictor=info.get("predictor"),
                        predictor_seconds=info.get(SECONDS_ATTR))  # fmt: skip
