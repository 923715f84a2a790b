"""The zero-shot cache: log p_zs(c | x) for every train and test image, in one HDF5 file.

Layout: root attrs ``format_version``, ``fingerprint``,
``class_names``, ``predictor``, ``created_at``, ``versions`` (JSON strings where structured),
``complete``, ``train_accuracy``, ``test_accuracy``, ``mean_clean_logprob`` (train split);
datasets ``/{train,test}/logprobs`` float32 [N, C] and ``/{train,test}/done`` bool [N].

Crash safety: the file is built as ``<path>.partial`` and renamed to ``<path>`` only once
every row is done and ``complete`` is set, so ``<path>`` never reads as complete when it is
not. Log-prob rows are flushed before the ``done`` flags that vouch for them; a re-run resumes
from ``done`` and, because batches are formed the same way, ends with the same bytes as one
uninterrupted run of a deterministic predictor.
"""

from __future__ import annotations

import json
import math
import os
import re
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
from rich import progress as rp
from rich.console import Console
from rich.text import Text

from bdsel.data.sources import int64_sha256
from bdsel.rundir import is_disk_full

if TYPE_CHECKING:
    from bdsel.data.sources import Dataset

FORMAT_VERSION = 1
SPLITS = ("train", "test")
REQUIRED_ATTRS = (
    "format_version", "fingerprint", "class_names", "predictor", "created_at", "versions",
    "complete", "train_accuracy", "test_accuracy", "mean_clean_logprob",
)  # fmt: skip
# optional: the temperature fits (bdsel.zeroshot.calibration), when the predictor has labels
CALIBRATION_ATTRS = ("temperature", "temperature_denoised", "label_noise_rate")
# the seconds the predictor took to make the cache, its fitting included (a cache made before
# bdsel recorded them has none): the one-time cost every end-to-end clock starts from
SECONDS_ATTR = "predictor_seconds"
# the noise model of the fit with label noise ("symmetric" or "transition", chosen by BIC) and
# its transition matrix and BICs (JSON); a cache made before bdsel chose one has neither
NOISE_MODEL_ATTRS = ("noise_model", "noise_fit")
RERUN = "re-run bdsel cache-zeroshot to resume"
REBUILD = (
    "rebuild it with bdsel cache-zeroshot --overwrite (overwrite=True from Python), or delete it"
)
LOGSUMEXP_TOL = 1e-3  # |logsumexp(row)| above this is not a float32 log-probability row
_READ_ROWS = 1 << 16  # rows per chunk when scanning a whole split


class CacheError(ValueError):
    """A cache file that cannot be used: unreadable, foreign, for another dataset, incomplete."""


class Predictor(Protocol):
    """What build_cache runs: a registered predictor (``bdsel.zeroshot.registry``) or any
    object with ``logprobs(split, rows)`` for rows of the dataset's "train"/"test" split."""

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor: ...
    def spec(self) -> dict[str, Any]: ...


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


def partial_path(path: str | Path) -> Path:
    """Where an unfinished cache for ``path`` lives."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What a cache must agree with: name, sizes, class names, hashes of the clean labels."""
    return {
        "dataset": dataset.name,
        "n_train": int(dataset.train.labels.shape[0]),
        "n_test": int(dataset.test.labels.shape[0]),
        "class_names": list(dataset.class_names),
        "train_labels_sha256": int64_sha256(dataset.train.labels),
        "test_labels_sha256": int64_sha256(dataset.test.labels),
    }


_FIELD_MEANING = {
    "dataset": "another dataset",
    "n_train": "a training set of another size",
    "n_test": "a test set of another size",
    "class_names": "another class set or class order",
    "train_labels_sha256": "another order or labelling of the training images",
    "test_labels_sha256": "another order or labelling of the test images",
}


def _fingerprint_problems(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key, meaning in _FIELD_MEANING.items():
        if stored.get(key) != current[key]:
            shown = "" if key.endswith("sha256") or key == "class_names" else (
                f" (cache: {stored.get(key)!r}, dataset: {current[key]!r})"
            )  # fmt: skip
            out.append(f"{key} differs{shown}: the cache was made for {meaning}")
    return out


def _json_spec(spec: dict[str, Any]) -> dict[str, Any]:
    try:  # round trip so tuples and lists compare equal to what the file holds
        return json.loads(json.dumps(spec, sort_keys=True))
    except TypeError as exc:
        raise ValueError(f"predictor spec is not JSON-serialisable: {exc}") from exc


def _versions() -> dict[str, str]:
    import bdsel

    try:
        import open_clip

        open_clip_version = open_clip.__version__
    except ImportError:  # a holdout predictor does not need open_clip
        open_clip_version = "not installed"
    return {"bdsel": getattr(bdsel, "__version__", "unknown"), "torch": torch.__version__,
            "open_clip": open_clip_version, "h5py": h5py.__version__}  # fmt: skip


# ---------------------------------------------------------------------- opening and checking


def check_cache_path(path: Path, setting: str = "zeroshot.cache (or --out)") -> None:
    """CacheError when ``path`` cannot name a cache file (a directory), naming the
    ``setting`` that points at it."""
    if Path(path).is_dir():
        raise CacheError(
            f"{path} is a directory, not a cache file: point {setting} at a file such as "
            f"{Path(path) / 'cache.h5'}"
        )


def check_not_partial(path: Path) -> None:
    """CacheError when ``path`` is missing but its ``.partial`` is there: an interrupted
    ``bdsel cache-zeroshot``, which the same command finishes."""
    path = Path(path)
    if not path.exists() and partial_path(path).exists():
        raise CacheError(
            f"the zero-shot cache {path} is incomplete ({partial_path(path)} exists): "
            "run the same bdsel cache-zeroshot command again to finish it"
        )


def _open(path: Path, mode: str = "r") -> h5py.File:
    check_cache_path(path)
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise CacheError(
            f"{path} is not a readable HDF5 file (corrupt or truncated?): {_h5_reason(exc)}"
        ) from exc


def _h5_reason(exc: BaseException) -> str:
    """The gist of an h5py error, on one line (HDF5 adds time, descriptor, buffer, offset)."""
    text = str(exc)
    if found := re.search(r"error message = '([^']*)'", text):
        return found.group(1)
    return text.splitlines()[0] if text else type(exc).__name__


def _read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """The root attrs with JSON fields parsed; CacheError unless this is a bdsel cache."""
    missing = [k for k in REQUIRED_ATTRS if k not in f.attrs]
    groups = [f"/{s}/{d}" for s in SPLITS for d in ("logprobs", "done") if f"{s}/{d}" not in f]
    if missing or groups:
        raise CacheError(
            f"{path} is not a bdsel zero-shot cache (missing {', '.join(missing + groups)})"
        )
    if (version := int(f.attrs["format_version"])) != FORMAT_VERSION:
        raise CacheError(f"{path}: format_version {version}, this bdsel reads {FORMAT_VERSION}")
    info: dict[str, Any] = {}
    for key in REQUIRED_ATTRS:
        value = f.attrs[key]
        if key in ("fingerprint", "class_names", "predictor", "versions"):
            try:
                value = json.loads(value)
            except (TypeError, ValueError) as exc:
                raise CacheError(f"{path}: attribute {key} is not valid JSON ({exc})") from exc
        elif isinstance(value, np.generic):
            value = value.item()
        info[key] = value
    for key in (*CALIBRATION_ATTRS, SECONDS_ATTR):  # optional
        if key in f.attrs:
            info[key] = float(f.attrs[key])
    if "noise_model" in f.attrs:
        info["noise_model"] = str(f.attrs["noise_model"])
        info["noise_fit"] = json.loads(f.attrs["noise_fit"])
    return info


def _calibrate(
    f: h5py.File, calibration: tuple[torch.Tensor, torch.Tensor], label_noise: bool
) -> None:
    """Fit the temperature to the calibration rows' labels and store it in ``f``'s attrs;
    with ``label_noise`` (labels that may be wrong) also the fit under label noise, symmetric
    or through a transition matrix, whichever BIC prefers (``fit_label_noise``)."""
    from bdsel.zeroshot.calibration import fit_label_noise, fit_temperature

    rows, labels = (t.cpu().long() for t in calibration)
    logprobs = _read_rows(f["train"]["logprobs"], rows)
    f.attrs["temperature"] = fit_temperature(logprobs, labels)
    if label_noise:
        fit = fit_label_noise(logprobs, labels)
        f.attrs["temperature_denoised"], f.attrs["label_noise_rate"] = (
            fit.temperature,
            fit.noise_rate,
        )
        f.attrs["noise_model"] = fit.model
        f.attrs["noise_fit"] = json.dumps({"transition": fit.transition, "bic": fit.bic})


def _bad_rows(logprobs: torch.Tensor) -> torch.Tensor:
    """bool [n]: rows that are not finite log-probabilities (NaN, Inf, or not normalised)."""
    lse = torch.logsumexp(logprobs.double(), dim=1)
    return ~torch.isfinite(logprobs).all(dim=1) | ~(lse.abs() <= LOGSUMEXP_TOL)


def _missing_rows(f: h5py.File) -> int:
    return int(sum((~f[s]["done"][...].astype(bool)).sum() for s in SPLITS))


def read_cache_info(path: str | Path) -> dict[str, Any]:
    """Root attrs (JSON parsed) plus ``rows`` and ``rows_done`` per split and ``n_classes``."""
    path = Path(path)
    with _open(path) as f:
        info = _read_attrs(f, path)
        info["path"] = str(path)
        info["n_classes"] = int(f["train"]["logprobs"].shape[1])
        info["rows"] = {s: int(f[s]["done"].shape[0]) for s in SPLITS}
        info["rows_done"] = {s: int(f[s]["done"][...].sum()) for s in SPLITS}
    return info


def auto_temperature(info: dict[str, Any], calibrate_noise: bool, path: str | Path) -> float:
    """``temperature: auto``: the temperature fitted when the cache was made, the one fitted
    with the labels' noise when ``calibrate_noise`` and the cache holds it (predictors that
    calibrate on observed labels); CacheError when the cache holds no fit."""
    if info.get("temperature") is None:
        raise CacheError(
            f"zeroshot.temperature=auto reads the temperature fitted when {path} was made, "
            "and it holds none (a cache from before bdsel fitted one, or a predictor without "
            "calibration labels): re-run bdsel cache-zeroshot --overwrite, or set a number"
        )
    if calibrate_noise and info.get("temperature_denoised") is not None:
        return float(info["temperature_denoised"])
    return float(info["temperature"])


def load_zs_logprobs(
    path: str | Path,
    dataset: Dataset | None,
    *,
    n_classes: int | None = None,
    temperature: float = 1.0,
    split: str = "train",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p_zs(c | x_i) at temperature T for every row of ``split`` -> float32 [N, C] (CPU).

    T is applied as log_softmax(logprobs / T), which equals log_softmax(logits / T). Raises
    CacheError for a file that is missing, unreadable, not a cache, for another dataset
    (``dataset``'s fingerprint; None: not checked), with other labels than ``labels`` [N] of
    ``split`` (when given), incomplete, non-finite, or with a class count other than
    ``n_classes``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    path = Path(path)
    if not path.exists():
        part = partial_path(path)
        if part.exists():
            with _open(part) as f:
                missing = _missing_rows(f)
            raise CacheError(f"incomplete cache {path}: {missing} rows missing in {part}; {RERUN}")
        raise CacheError(f"zero-shot cache {path} does not exist; run bdsel cache-zeroshot")
    with _open(path) as f:
        info = _read_attrs(f, path)
        problems = []
        if dataset is not None:
            problems = _fingerprint_problems(info["fingerprint"], dataset_fingerprint(dataset))
        if labels is not None and info["fingerprint"].get(f"{split}_labels_sha256") != (
            int64_sha256(labels)
        ):
            problems.append(f"labels differ: the cache was made for other {split} labels")
        if problems:
            name = f"dataset {dataset.name!r}" if dataset is not None else "these labels"
            raise CacheError(f"{path} does not match {name}: " + "; ".join(problems))
        missing = _missing_rows(f)
        if missing or not info["complete"]:
            raise CacheError(f"incomplete cache {path}: {missing} rows missing; {RERUN}")
        try:
            logprobs = torch.from_numpy(f[split]["logprobs"][...].astype(np.float32, copy=False))
        except OSError as exc:
            raise CacheError(f"{path}: cannot read /{split}/logprobs ({exc})") from exc
    n_rows, n_cached = info["fingerprint"][f"n_{split}"], len(info["fingerprint"]["class_names"])
    if tuple(logprobs.shape) != (n_rows, n_cached):
        raise CacheError(f"{path}: /{split}/logprobs has shape {tuple(logprobs.shape)}, "
                         f"expected ({n_rows}, {n_cached})")  # fmt: skip
    if n_classes is not None and n_cached != n_classes:
        raise CacheError(f"{path} holds {n_cached} classes, expected {n_classes}")
    bad = int(_bad_rows(logprobs).sum())
    if bad:
        raise CacheError(f"{path}: {bad} rows of /{split}/logprobs are not log-probabilities")
    if temperature == 1.0:
        return logprobs
    return torch.log_softmax(logprobs / temperature, dim=1)


# ---------------------------------------------------------------------- building


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
        f.attrs["versions"] = json.dumps(_versions(), sort_keys=True)
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
    with _open(path) as f:
        info = _read_attrs(f, path)
        info["missing"] = _missing_rows(f)
    problems = _fingerprint_problems(info["fingerprint"], fingerprint)
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
    for start in range(0, len(done), _READ_ROWS):
        mask = done[start : start + _READ_ROWS]
        if not mask.any():
            continue
        bad = _bad_rows(torch.from_numpy(ds[start : start + len(mask)])).numpy() & mask
        mask[bad] = False  # a view: updates ``done`` in place
        reset += int(bad.sum())
    return reset


def _check_output(out: torch.Tensor, n_rows: int, n_classes: int) -> np.ndarray:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n_rows, n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"predictor returned {got}, expected ({n_rows}, {n_classes})")
    arr = out.detach().to(torch.float32).cpu()
    if _bad_rows(arr).any():
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


def _split_stats(f: h5py.File, split: str, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy vs the clean labels, mean log-prob of the clean label), read in chunks."""
    ds, labels = f[split]["logprobs"], labels.detach().cpu().long()
    n = len(labels)
    if n == 0:
        return float("nan"), float("nan")
    correct, total_lp = 0, 0.0
    for start in range(0, n, _READ_ROWS):
        lp = torch.from_numpy(ds[start : start + _READ_ROWS])
        y = labels[start : start + len(lp)]
        correct += int((lp.argmax(dim=1) == y).sum())
        total_lp += float(lp.gather(1, y[:, None]).double().sum())
    return correct / n, total_lp / n


class _RateColumn(rp.ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} img/s" if task.speed else "- img/s", style="cyan")


def build_cache(
    path: str | Path,
    dataset: Dataset,
    predictor: Predictor,
    *,
    batch_size: int = 256,
    flush_every: int = 8,
    progress: bool = True,
    console: Console | None = None,
    overwrite: bool = False,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    label_noise: bool = False,
    fit_seconds: float = 0.0,
) -> CacheSummary:
    """Run ``predictor`` over every train and test image and write the cache at ``path``.

    ``calibration``: train-split rows and labels the predictor never trained on; the
    temperature that fits them best (``bdsel.zeroshot.calibration``) is stored as the
    ``temperature`` attribute, which ``zeroshot.temperature: auto`` reads. ``label_noise``:
    the calibration labels are observed ones that noise may have changed; the fit under
    label noise is stored too (``temperature_denoised``, ``label_noise_rate``, ``noise_model``,
    ``noise_fit``: symmetric or a transition matrix, whichever BIC prefers), and added to a
    complete cache made before bdsel fitted it (its log-probs are not recomputed). Its cost is
    recorded (SECONDS_ATTR: ``fit_seconds``, rows and calibration, over a resume's sessions).

    Resumes ``<path>.partial`` when it was made for the same dataset fingerprint and predictor
    spec; returns at once when ``path`` is already complete for them. A cache or partial file
    for another dataset or predictor is a CacheError unless ``overwrite`` (the old ``path``
    then stays until the new cache is complete).
    """
    if batch_size < 1 or flush_every < 1:
        raise ValueError(f"batch_size and flush_every must be >= 1 ({batch_size}, {flush_every})")
    t0 = time.perf_counter()
    path, part = Path(path), partial_path(path)
    fingerprint, spec = dataset_fingerprint(dataset), _json_spec(predictor.spec())
    console = console or Console()

    if path.exists() and not overwrite:
        info = _complete_info(path, fingerprint, spec, calibration, label_noise)
        return _summary(path, fingerprint, info, t0, 0)
    _prepare_partial(part, fingerprint, spec, len(dataset.class_names), overwrite, console)
    f = h5py.File(part, "r+")
    try:
        clock = _cost_clock(f, fit_seconds, t0)
        computed = _fill(f, part, dataset, predictor, (batch_size, flush_every), progress,
                         console, clock)  # fmt: skip
        _write_stats(f, dataset, calibration, label_noise, clock)
        f.attrs["complete"] = True  # last: every row and statistic is already written
        f.flush()
        info = _read_attrs(f, part)
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
    f: h5py.File,
    dataset: Dataset,
    calibration: tuple[torch.Tensor, torch.Tensor] | None,
    label_noise: bool,
    clock: Callable[[], float],
) -> None:
    """Accuracies and the mean clean-label log-prob of the filled cache, its temperature and,
    once they are done, its cost so far (``clock()``)."""
    train_acc, train_lp = _split_stats(f, "train", dataset.train.labels)
    test_acc, _ = _split_stats(f, "test", dataset.test.labels)
    f.attrs["train_accuracy"] = train_acc
    f.attrs["test_accuracy"] = test_acc
    f.attrs["mean_clean_logprob"] = train_lp
    if calibration is not None:
        _calibrate(f, calibration, label_noise)
    f.attrs[SECONDS_ATTR] = clock()


def _complete_info(
    path: Path,
    fingerprint: dict[str, Any],
    spec: dict[str, Any],
    calibration: tuple[torch.Tensor, torch.Tensor] | None,
    label_noise: bool,
) -> dict[str, Any]:
    """The attributes of a complete cache made for this dataset and predictor (with the fit
    under label noise added when it lacks it); a CacheError for any other file at ``path``."""
    try:
        problem, info = _existing_problem(path, fingerprint, spec)
    except CacheError as exc:  # unreadable: truncated, or not HDF5 at all
        raise CacheError(f"{exc}; {REBUILD}") from exc
    if problem or info["missing"] or not info["complete"]:
        why = problem or "is incomplete"
        raise CacheError(f"{path} exists and {why}; {REBUILD}")
    if (
        calibration is not None
        and label_noise
        and not {"label_noise_rate", "noise_model"} <= info.keys()
    ):
        with _open(path, "r+") as f:
            _calibrate(f, calibration, label_noise)
            info = _read_attrs(f, path)
    return info


def _prepare_partial(
    part: Path,
    fingerprint: dict[str, Any],
    spec: dict[str, Any],
    n_classes: int,
    overwrite: bool,
    console: Console,
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
            console.print(
                Text.assemble(("discarding unreadable partial cache", "yellow"), f" {part} ({exc})")
            )
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
    dataset: Dataset,
    predictor: Predictor,
    sizes: tuple[int, int],
    progress: bool,
    console: Console,
    clock: Callable[[], float],
) -> int:
    """Compute every row not done yet, split by split, with a progress bar; returns how many.
    ``sizes``: (batch size, batches per flush); ``clock()``: the cache's seconds so far, stored
    with every commit."""
    done = {s: f[s]["done"][...].astype(bool) for s in SPLITS}
    for s in SPLITS:
        _reset_invalid_done(f[s]["logprobs"], done[s])
    todo = sum(int((~d).sum()) for d in done.values())
    resumed = sum(len(d) for d in done.values()) - todo
    if resumed and progress:
        console.print(f"resuming {part}: {resumed} rows done, {todo} to go", markup=False)
    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
               _RateColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn())  # fmt: skip
    computed = 0
    with rp.Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("zero-shot", total=todo)
        for s in SPLITS:
            bar.update(task, description=f"zero-shot {s}")
            advance = lambda k: bar.advance(task, k)  # noqa: E731
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


def _read_rows(dataset: h5py.Dataset, rows: torch.Tensor) -> torch.Tensor:
    """``dataset[rows]`` as float64 [len(rows), C], in the order of ``rows``."""
    order = torch.argsort(rows)
    values = torch.from_numpy(dataset[rows[order].numpy()]).double()  # h5py wants sorted rows
    out = torch.empty_like(values)
    out[order] = values
    return out
