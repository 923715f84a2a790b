"""What ``bdsel cache-zeroshot`` does, and how ``train`` reads the cache back.

``cache_zeroshot`` builds the registered predictor a config names
(``bdsel.predictors.registry``: open_clip CLIP, the hold-out model, ...) and writes the HDF5
cache. ``load_lookups`` gives a training run its per-index tables, each row's observed
label's log-prob and likeliest class (``bdsel.table.LabelColumn``): ``zs_logprobs`` (at
``zeroshot.temperature``, for the bayesian score) and ``il_logprobs`` (at T = 1, the
irreducible-loss model of RHO-LOSS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bdsel.cache.format import (
    SECONDS_ATTR,
    CacheError,
    auto_temperature,
    check_cache_path,
    check_not_partial,
    partial_path,
    read_cache_info,
)
from bdsel.cache.provenance import SPLIT_KEYS, check_split
from bdsel.cache.writer import CacheSummary, build_cache
from bdsel.calibration import calibration_step
from bdsel.config import Config
from bdsel.data import RunData, derive_run_data, load_dataset
from bdsel.distributed import World, barrier, broadcast_from_main, init_world
from bdsel.locking import ExclusiveLock, LockedError
from bdsel.names import check_names
from bdsel.predictors.registry import (
    CalibratedPredictor,
    DatasetSpecific,
    TrainedPredictor,
    create_predictor,
    out_of_fold,
    predictor_entry,
)
from bdsel.predictors.sharded import ShardedPredictor, serve
from bdsel.rundir import DiskFullError
from bdsel.runtime import RowsBar, resolve_device, step_progress
from bdsel.table import LabelColumn

LOOKUPS = ("zs_logprobs", "il_logprobs")


def predictor_settings(config: Config) -> dict[str, Any]:
    """The config's settings that shape the cached log-probs, as the predictor's spec names
    them (each predictor's ``settings(config)``). Not the temperature (applied at read time),
    not the split (its hash is checked apart), not a model's init seed (one cache serves
    every run seed)."""
    return predictor_entry(config.zeroshot.predictor).cls.settings(config)


def settings_hash(config: Config) -> str:
    """8 hex digits that tell one predictor setting's default cache file from another's."""
    prompts = getattr(config.zeroshot.settings, "prompts", None)  # clip's
    settings = dict(predictor_settings(config), prompts=prompts)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def default_cache_path(config: Config) -> Path:
    """``zeroshot.cache``, or cache/<the predictor's cache_stem(config)>-<settings hash>.h5."""
    if config.zeroshot.cache:
        return Path(config.zeroshot.cache)
    stem = predictor_entry(config.zeroshot.predictor).cache_stem(config)
    return Path("cache") / f"{stem}-{settings_hash(config)}.h5"


def spec_mismatch(
    stored: dict[str, Any], expected: dict[str, Any], omitted: Iterable[str] = ()
) -> list[str]:
    """The keys of ``expected`` whose value the cache's stored spec does not share, and the
    ``omitted`` settings (ones the config's spec leaves out: at their default, or doing
    nothing there) that the stored spec names: its cache was made with them set."""
    if stored.get("kind") != expected["kind"]:
        return [f"kind (cache: {stored.get('kind')!r}, config: {expected['kind']!r})"]
    out = [f"{key} (cache: {stored[key]!r}, config: unset)" for key in omitted if key in stored]
    for key, value in expected.items():
        if stored.get(key) != value:
            shown = (
                ""
                if isinstance(value, list)
                else f" (cache: {stored.get(key)!r}, config: {value!r})"
            )
            out.append(f"{key}{shown}")
    return out


def expected_spec(config: Config, data: RunData) -> dict[str, Any]:
    """What a cache made with ``config``'s predictor stores in its spec (see spec_mismatch):
    the predictor's ``settings``, and what its ``expected_spec`` adds for a dataset."""
    cls = predictor_entry(config.zeroshot.predictor).cls
    expected = cls.settings(config)
    if issubclass(cls, DatasetSpecific):
        expected.update(cls.expected_spec(config, data))
    return expected


def omitted_settings(config: Config) -> list[str]:
    """The predictor's own settings (``zeroshot.*`` of its ``Settings``) that its
    ``settings(config)`` leaves out for this config (where they do nothing), in field order."""
    own = config.zeroshot.settings
    if not dataclasses.is_dataclass(own):
        return []
    named = predictor_entry(config.zeroshot.predictor).cls.settings(config)
    split = SPLIT_KEYS  # the split's settings are checked with the split (check_split)
    return [f.name for f in dataclasses.fields(own) if f.name not in named and f.name not in split]


def predictor_device(config: Config, world: World) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def calibrates_on_observed_labels(predictor: Any) -> bool:
    """Whether a predictor (class or instance) fits its temperature to the observed, possibly
    noisy labels (``calibration_labels = "observed"``: crossfit, clip) rather than clean ones."""
    return getattr(predictor, "calibration_labels", "clean") == "observed"


def make_predictor(config: Config, data: RunData, world: World | None = None):
    """The predictor ``zeroshot.predictor`` names, ready to call ``.logprobs(split, rows)``."""
    return create_predictor(config, data, predictor_device(config, world or World()))


def cache_zeroshot(
    config: Config,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> CacheSummary:
    """Compute and write the zero-shot cache for ``config``'s dataset; resumable.

    Under torchrun the rows of every batch are shared out over the ranks and rank 0 writes the
    one file (``bdsel.predictors.sharded``); every rank returns rank 0's summary.
    """
    check_names(config)
    world = init_world(config.device)
    out = Path(out) if out is not None else default_cache_path(config)
    check_cache_path(out)
    lock = _lock_cache(out, world)
    try:
        return _write_cache(config, out, world, overwrite, progress, console)
    finally:
        if lock is not None:
            lock.release()


def cache_lock_path(cache: Path) -> Path:
    """The lock file a cache writer holds: ``<cache>.lock`` beside it."""
    return cache.with_name(cache.name + ".lock")


def _lock_cache(out: Path, world: World) -> ExclusiveLock | None:
    """Rank 0 checks that the cache's folder is writable and takes the cache's lock, before any
    model is trained; its error stops every rank."""
    error, lock = None, None
    if world.is_main:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".probe"):
                pass  # before any model is trained: a read-only place is an error now
            lock = ExclusiveLock(cache_lock_path(out), f"the zero-shot cache {out}").acquire()
        except OSError as exc:
            error = f"cannot write the cache in {out.parent}: {exc.strerror}"
        except LockedError as exc:
            error = str(exc)
    error = broadcast_from_main(error)
    if error is not None:
        raise CacheError(error)
    return lock


def _write_cache(
    config: Config,
    out: Path,
    world: World,
    overwrite: bool,
    progress: bool,
    console: Console | None,
) -> CacheSummary:
    """The body of :func:`cache_zeroshot`, with the cache's lock held on rank 0."""
    if not world.is_main:
        console, progress = Console(quiet=True), False
    dataset = load_dataset(config.data)
    data = derive_run_data(dataset, config.data, config.seed, config.holdout_fraction)
    predictor = make_predictor(config, data, world)
    weights = holdout_weights_path(out)
    needs_model = isinstance(predictor, TrainedPredictor) and not (out.exists() and not overwrite)
    barrier()  # every rank has looked at ``out`` before rank 0 may replace it
    t_fit = time.perf_counter()
    if needs_model:
        _fit_predictor(predictor, weights, world, overwrite, progress, console)
    fit_seconds = time.perf_counter() - t_fit
    summary = None
    if world.is_main:
        writer = predictor
        if world.distributed:
            writer = ShardedPredictor(predictor, dataset, world, predictor_device(config, world))
        try:
            finish = None
            if isinstance(predictor, CalibratedPredictor):
                noisy = calibrates_on_observed_labels(predictor)
                finish = calibration_step(*predictor.calibration(), label_noise=noisy)
            with RowsBar(console, show=progress) as bar:
                summary = build_cache(
                    out,
                    dataset,
                    writer,
                    batch_size=config.eval.batch_size * world.size,
                    overwrite=overwrite,
                    finish=finish,
                    fit_seconds=fit_seconds,
                    progress=bar,
                )
        finally:
            if world.distributed:
                writer.stop()
        weights.unlink(missing_ok=True)  # the cache is complete: nothing left to resume
    else:
        serve(predictor, dataset, world, predictor_device(config, world))
    return broadcast_from_main(summary)


def _fit_predictor(
    predictor: TrainedPredictor,
    weights: Path,
    world: World,
    overwrite: bool,
    progress: bool,
    console: Console | None,
) -> None:
    """Rank 0 trains (or reloads) the predictor's model and saves it to ``weights``; the
    other ranks then load that file."""
    if world.is_main:
        if overwrite:
            weights.unlink(missing_ok=True)
        if console is not None:
            verb = "reloading" if weights.is_file() else "training"
            console.print(f"{verb} {predictor.describe()}", markup=False)
        try:
            if progress:
                with step_progress(console) as bar:
                    predictor.fit_or_load(weights, bar)
            else:
                predictor.fit_or_load(weights)
        except DiskFullError as exc:
            raise CacheError(
                f"{exc}; no cache row was written yet: free some space and run the "
                "same bdsel cache-zeroshot command again"
            ) from None
    barrier()
    if not world.is_main:
        predictor.fit_or_load(weights)


def holdout_weights_path(cache: Path) -> Path:
    """Where an unfinished hold-out cache keeps its model, so a resume uses the same one."""
    return partial_path(cache).with_suffix(".model.pt")


def load_lookups(
    names: tuple[str, ...], config: Config, data: RunData, device: torch.device
) -> dict[str, LabelColumn]:
    """The lookups a selector requires, by global index, on ``device``: each row's observed
    label's log-prob and the predictor's likeliest class (O(N), streamed from the cache)."""
    from bdsel.cache.format import load_label_logprobs

    unknown = [n for n in names if n not in LOOKUPS]
    if unknown:
        raise ValueError(f"unknown lookup {unknown[0]!r}; bdsel provides {', '.join(LOOKUPS)}")
    if not names:
        return {}
    path = _existing_cache(config)
    info = read_cache_info(path)
    _check_cache_spec(path, info.get("predictor", {}), names, config, data)
    zs_temperature = config.zeroshot.temperature
    if zs_temperature in ("auto", "plain") and "zs_logprobs" in names:
        zs_temperature = _auto_temperature(path, info, config)
    out = {}
    for name in names:
        temperature = zs_temperature if name == "zs_logprobs" else 1.0
        logprob, top = load_label_logprobs(
            path,
            data.dataset,
            data.observed,
            n_classes=data.dataset.n_classes,
            temperature=temperature,
        )
        column = LabelColumn(logprob, top, data.observed.long(), data.dataset.n_classes)
        out[name] = column.to(device)
    return out


def one_time_cost(config: Config, lookups: tuple[str, ...]) -> dict[str, Any]:
    """What a run's caches cost before its first step, as its metrics records carry it:
    ``predictor_s``, the seconds recorded in the zero-shot cache it reads (when ``lookups``
    asks for one) and in ``data.clean.cache`` (0 for a run that reads none; None when a cache
    holds no record of its seconds), and ``predictor_test_acc``, the zero-shot cache's own
    test accuracy (None without one)."""
    paths = ([default_cache_path(config)] if lookups else []) + (
        [Path(config.data.clean.cache)] if config.data.clean.cache else []
    )
    infos = [read_cache_info(path) for path in paths]
    recorded = [info.get(SECONDS_ATTR) for info in infos]
    seconds = None if None in recorded else float(sum(recorded))
    test_acc = float(infos[0]["test_accuracy"]) if lookups else None
    return {"predictor_s": seconds, "predictor_test_acc": test_acc}


def _existing_cache(config: Config) -> Path:
    """The run's cache file; a CacheError saying how to make it when it is not there."""
    path = default_cache_path(config)
    check_cache_path(path)
    method = config.select.method
    check_not_partial(path)
    if not path.exists():
        raise CacheError(
            f"select.method={method} needs the zero-shot cache {path}, which does not exist. "
            f"Create it first: bdsel cache-zeroshot --config <the same config> "
            f"(zeroshot.predictor={config.zeroshot.predictor}), or point zeroshot.cache at one"
        )
    return path


def _check_cache_spec(
    path: Path, spec: dict[str, Any], names: tuple[str, ...], config: Config, data: RunData
) -> None:
    """The cache was made for this run's predictor settings and split, and by a model that
    can serve as the irreducible-loss model when a lookup asks for one."""
    if diff := spec_mismatch(spec, expected_spec(config, data), omitted_settings(config)):
        raise CacheError(
            f"{path} was made with other predictor settings than this run's: "
            f"{'; '.join(diff)}. Set them to the cache's values, or make a cache for this "
            "config with bdsel cache-zeroshot"
        )
    check_split(path, spec, config, data)
    # RHO-LOSS's irreducible loss needs models that never trained on the row they predict:
    # the hold-out model, or out-of-fold ones.
    kind = spec.get("kind")
    if "il_logprobs" in names and kind != "holdout" and not out_of_fold(kind):
        raise CacheError(
            f"select.method={config.select.method} needs an irreducible-loss model: a cache "
            f"made with zeroshot.predictor=holdout, crossfit or probe; {path} was made by "
            f"{spec.get('kind')!r}"
        )


def _auto_temperature(path: Path, info: dict[str, Any], config: Config) -> float:
    """zeroshot.temperature=auto or plain: the cache's fitted T (auto: with the labels' noise,
    where the predictor calibrates on observed labels and the cache holds that fit)."""
    observed = calibrates_on_observed_labels(predictor_entry(config.zeroshot.predictor).cls)
    with_noise = config.zeroshot.temperature == "auto"
    if with_noise and observed and info.get("temperature_denoised") is None:
        raise CacheError(
            f"{path} holds no temperature fitted with the labels' noise: remake it with bdsel "
            "cache-zeroshot --overwrite, or set zeroshot.temperature=plain"
        )
    return auto_temperature(info, with_noise, path)
