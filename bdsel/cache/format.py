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

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch

from bdsel.data.sources import int64_sha256

if TYPE_CHECKING:
    from bdsel.data.sources import Dataset

FORMAT_VERSION = 1
SPLITS = ("train", "test")
REQUIRED_ATTRS = (
    "format_version", "fingerprint", "class_names", "predictor", "created_at", "versions",
    "complete", "train_accuracy", "test_accuracy", "mean_clean_logprob",
)  # fmt: skip
# optional: the temperature fits (bdsel.calibration), when the predictor has labels
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
READ_ROWS = 1 << 16  # rows per chunk when scanning a whole split


class CacheError(ValueError):
    """A cache file that cannot be used: unreadable, foreign, for another dataset, incomplete."""


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


def fingerprint_problems(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key, meaning in _FIELD_MEANING.items():
        if stored.get(key) != current[key]:
            shown = "" if key.endswith("sha256") or key == "class_names" else (
                f" (cache: {stored.get(key)!r}, dataset: {current[key]!r})"
            )  # fmt: skip
            out.append(f"{key} differs{shown}: the cache was made for {meaning}")
    return out


def json_spec(spec: dict[str, Any]) -> dict[str, Any]:
    try:  # round trip so tuples and lists compare equal to what the file holds
        return json.loads(json.dumps(spec, sort_keys=True))
    except TypeError as exc:
        raise ValueError(f"predictor spec is not JSON-serialisable: {exc}") from exc


def versions() -> dict[str, str]:
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


def open_cache(path: Path, mode: str = "r") -> h5py.File:
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


def read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
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


def bad_rows(logprobs: torch.Tensor) -> torch.Tensor:
    """bool [n]: rows that are not finite log-probabilities (NaN, Inf, or not normalised)."""
    lse = torch.logsumexp(logprobs.double(), dim=1)
    return ~torch.isfinite(logprobs).all(dim=1) | ~(lse.abs() <= LOGSUMEXP_TOL)


def missing_rows(f: h5py.File) -> int:
    return int(sum((~f[s]["done"][...].astype(bool)).sum() for s in SPLITS))


def read_cache_info(path: str | Path) -> dict[str, Any]:
    """Root attrs (JSON parsed) plus ``rows`` and ``rows_done`` per split and ``n_classes``."""
    path = Path(path)
    with open_cache(path) as f:
        info = read_attrs(f, path)
        info["path"] = str(path)
        info["n_classes"] = int(f["train"]["logprobs"].shape[1])
        info["rows"] = {s: int(f[s]["done"].shape[0]) for s in SPLITS}
        info["rows_done"] = {s: int(f[s]["done"][...].sum()) for s in SPLITS}
    return info


def auto_temperature(info: dict[str, Any], with_noise: bool, path: str | Path) -> float:
    """``temperature: auto`` (``with_noise``) or ``plain``: the temperature fitted when the
    cache was made; with ``with_noise``, the one fitted with the labels' noise where the cache
    holds it (predictors that calibrate on observed labels); CacheError when it holds no fit."""
    if info.get("temperature") is None:
        raise CacheError(
            f"zeroshot.temperature=auto/plain reads the temperature fitted when {path} was made, "
            "and it holds none (a cache from before bdsel fitted one, or a predictor without "
            "calibration labels): re-run bdsel cache-zeroshot --overwrite, or set a number"
        )
    if with_noise and info.get("temperature_denoised") is not None:
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
    _check_request(split, temperature)
    with _checked_split(Path(path), dataset, split, labels, n_classes) as rows:
        logprobs = _read_chunk(rows, slice(None), path, split)
    bad = int(bad_rows(logprobs).sum())
    if bad:
        raise CacheError(f"{path}: {bad} rows of /{split}/logprobs are not log-probabilities")
    if temperature == 1.0:
        return logprobs
    return torch.log_softmax(logprobs / temperature, dim=1)


def load_label_logprobs(
    path: str | Path,
    dataset: Dataset | None,
    observed: torch.Tensor,
    *,
    n_classes: int | None = None,
    temperature: float = 1.0,
    split: str = "train",
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of ``split``: log p_zs(observed label | x_i) at temperature T (float32
    [N]) and the likeliest class (int64 [N]), read in chunks of READ_ROWS rows, so that
    memory holds O(N) values, not the N·C of the table. The same values as
    :func:`load_zs_logprobs` gives at those entries, and the same checks."""
    _check_request(split, temperature)
    observed = observed.long().cpu()
    logprob, top, bad = [], [], 0
    with _checked_split(Path(path), dataset, split, None, n_classes) as rows:
        if len(observed) != rows.shape[0]:
            raise ValueError(f"observed: {len(observed)} labels for {rows.shape[0]} rows")
        for start in range(0, rows.shape[0], READ_ROWS):
            chunk = _read_chunk(rows, slice(start, start + READ_ROWS), path, split)
            bad += int(bad_rows(chunk).sum())
            if temperature != 1.0:
                chunk = torch.log_softmax(chunk / temperature, dim=1)
            labels = observed[start : start + READ_ROWS, None]
            logprob.append(chunk.gather(1, labels).squeeze(1))
            top.append(chunk.argmax(1))
    if bad:
        raise CacheError(f"{path}: {bad} rows of /{split}/logprobs are not log-probabilities")
    empty = (torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return (torch.cat(logprob), torch.cat(top)) if logprob else empty


def _check_request(split: str, temperature: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")


def _read_chunk(rows: h5py.Dataset, where: slice, path: str | Path, split: str) -> torch.Tensor:
    try:
        return torch.from_numpy(rows[where].astype(np.float32, copy=False))
    except OSError as exc:
        raise CacheError(f"{path}: cannot read /{split}/logprobs ({exc})") from exc


@contextlib.contextmanager
def _checked_split(
    path: Path,
    dataset: Dataset | None,
    split: str,
    labels: torch.Tensor | None,
    n_classes: int | None,
) -> Iterator[h5py.Dataset]:
    """``/split/logprobs`` of a complete cache made for ``dataset`` (and ``labels``), with the
    shape its fingerprint promises: every check but the rows' own."""
    if not path.exists():
        part = partial_path(path)
        if part.exists():
            with open_cache(part) as f:
                missing = missing_rows(f)
            raise CacheError(f"incomplete cache {path}: {missing} rows missing in {part}; {RERUN}")
        raise CacheError(f"zero-shot cache {path} does not exist; run bdsel cache-zeroshot")
    with open_cache(path) as f:
        info = read_attrs(f, path)
        problems = []
        if dataset is not None:
            problems = fingerprint_problems(info["fingerprint"], dataset_fingerprint(dataset))
        if labels is not None and info["fingerprint"].get(f"{split}_labels_sha256") != (
            int64_sha256(labels)
        ):
            problems.append(f"labels differ: the cache was made for other {split} labels")
        if problems:
            name = f"dataset {dataset.name!r}" if dataset is not None else "these labels"
            raise CacheError(f"{path} does not match {name}: " + "; ".join(problems))
        missing = missing_rows(f)
        if missing or not info["complete"]:
            raise CacheError(f"incomplete cache {path}: {missing} rows missing; {RERUN}")
        rows = f[split]["logprobs"]
        fp = info["fingerprint"]
        n_rows, n_cached = fp[f"n_{split}"], len(fp["class_names"])
        if tuple(rows.shape) != (n_rows, n_cached):
            raise CacheError(f"{path}: /{split}/logprobs has shape {tuple(rows.shape)}, "
                             f"expected ({n_rows}, {n_cached})")  # fmt: skip
        if n_classes is not None and n_cached != n_classes:
            raise CacheError(f"{path} holds {n_cached} classes, expected {n_classes}")
        yield rows


# ---------------------------------------------------------------------- rows by index


def read_rows(dataset: h5py.Dataset, rows: torch.Tensor) -> torch.Tensor:
    """``dataset[rows]`` as float64 [len(rows), C], in the order of ``rows``."""
    order = torch.argsort(rows)
    values = torch.from_numpy(dataset[rows[order].numpy()]).double()  # h5py wants sorted rows
    out = torch.empty_like(values)
    out[order] = values
    return out
