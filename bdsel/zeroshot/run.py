"""What ``bdsel cache-zeroshot`` does, and how ``train`` reads the cache back.

``cache_zeroshot`` builds the predictor a config names (open_clip CLIP or the hold-out model)
and writes the HDF5 cache. ``load_lookups`` gives a training run its per-index zero-shot
log-probs: ``zs_logprobs`` (at ``zeroshot.temperature``, for the bayesian score) and
``il_logprobs`` (at T = 1, the irreducible-loss model of RHO-LOSS).
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from bdsel.config import Config
from bdsel.data import RunData, derive_run_data, load_dataset, make_image_source
from bdsel.distributed import World, barrier, broadcast_from_main, init_world
from bdsel.engine import resolve_device, step_progress
from bdsel.zeroshot.cache import (
    CacheError,
    CacheSummary,
    build_cache,
    partial_path,
    read_cache_info,
)
from bdsel.zeroshot.holdout import indices_sha256
from bdsel.zeroshot.sharded import ShardedPredictor, serve

LOOKUPS = ("zs_logprobs", "il_logprobs")


def default_cache_path(config: Config) -> Path:
    """``zeroshot.cache``, or cache/<dataset>-<predictor>-... .h5 derived from the config."""
    z, d = config.zeroshot, config.data
    if z.cache:
        return Path(z.cache)
    if z.predictor == "holdout":
        split_seed = config.seed if d.split_seed is None else d.split_seed
        name = f"{d.name}-holdout-{z.holdout.model}-split{split_seed}-h{d.holdout_fraction:g}"
        if d.imbalance.ratio > 1:
            name += f"-lt{d.imbalance.ratio:g}"
    else:
        name = f"{d.name}-clip-{Path(z.model).stem}-{Path(z.pretrained).stem or 'random'}"
    return Path("cache") / f"{name}.h5"


def predictor_device(config: Config, world: World) -> torch.device:
    device = resolve_device(config.zeroshot.device, "zeroshot.device")
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def make_predictor(config: Config, data: RunData, world: World | None = None):
    """The predictor ``zeroshot.predictor`` names, ready to call ``.logprobs``."""
    z = config.zeroshot
    device = predictor_device(config, world or World())
    if z.predictor == "holdout":
        from bdsel.zeroshot.holdout import HoldoutPredictor

        source = make_image_source(
            data.dataset, device, augment=config.data.augment, num_workers=config.data.num_workers
        )
        return HoldoutPredictor(config, data, source)
    from bdsel.zeroshot.clip import ClipPredictor
    from bdsel.zeroshot.prompts import prompts_for

    class_names, templates = prompts_for(data.dataset.name, data.dataset.class_names, z.prompts)
    return ClipPredictor(
        clip_model_name(z.model),
        z.pretrained,
        class_names,
        templates,
        precision=z.precision,
        device=device,
        batch_size=z.batch_size,
    )


def clip_model_name(model: str) -> str:
    """A built-in open_clip name, or a JSON architecture file registered under its stem."""
    if not model.endswith(".json"):
        return model
    import open_clip

    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"zeroshot.model: architecture file {path} does not exist")
    open_clip.add_model_config(path)
    return path.stem


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
    one file (``bdsel.zeroshot.sharded``); every rank returns rank 0's summary.
    """
    world = init_world(config.zeroshot.device)
    out = Path(out) if out is not None else default_cache_path(config)
    if world.is_main:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create {out.parent}: {exc.strerror}") from exc
    else:
        console, progress = Console(quiet=True), False
    dataset = load_dataset(config.data)
    data = derive_run_data(dataset, config.data, config.seed)
    predictor = make_predictor(config, data, world)
    weights = holdout_weights_path(out)
    needs_model = config.zeroshot.predictor == "holdout" and not (out.exists() and not overwrite)
    barrier()  # every rank has looked at ``out`` before rank 0 may replace it
    if needs_model:
        # Rank 0 trains (or reloads) the hold-out model and saves it; the others load that file.
        if world.is_main:
            if overwrite:
                weights.unlink(missing_ok=True)
            if console is not None:
                verb = "reloading" if weights.is_file() else "training"
                console.print(
                    f"{verb} the hold-out model ({config.zeroshot.holdout.model}, "
                    f"{config.zeroshot.holdout.epochs} epochs on {len(data.holdout_idx)} points)"
                )
            if progress:
                with step_progress(console) as bar:
                    predictor.fit_or_load(weights, bar)
            else:
                predictor.fit_or_load(weights)
        barrier()
        if not world.is_main:
            predictor.fit_or_load(weights)
    summary = None
    if world.is_main:
        writer = predictor
        if world.distributed:
            writer = ShardedPredictor(predictor, dataset, world, predictor_device(config, world))
        try:
            summary = build_cache(
                out,
                dataset,
                writer,
                batch_size=config.zeroshot.batch_size * world.size,
                progress=progress,
                console=console,
                overwrite=overwrite,
            )
        finally:
            if world.distributed:
                writer.stop()
        weights.unlink(missing_ok=True)  # the cache is complete: nothing left to resume
    else:
        serve(predictor, dataset, world, predictor_device(config, world))
    return broadcast_from_main(summary)


def holdout_weights_path(cache: Path) -> Path:
    """Where an unfinished hold-out cache keeps its model, so a resume uses the same one."""
    return partial_path(cache).with_suffix(".model.pt")


def load_lookups(
    names: tuple[str, ...], config: Config, data: RunData, device: torch.device
) -> dict[str, torch.Tensor]:
    """Device tensors [N, C] by global index for the lookups a selector requires."""
    from bdsel.zeroshot.cache import load_zs_logprobs

    unknown = [n for n in names if n not in LOOKUPS]
    if unknown:
        raise ValueError(f"unknown lookup {unknown[0]!r}; bdsel provides {', '.join(LOOKUPS)}")
    if not names:
        return {}
    path = default_cache_path(config)
    method = config.select.method
    if not path.exists() and partial_path(path).exists():
        raise CacheError(
            f"the zero-shot cache {path} is incomplete ({partial_path(path)} exists): "
            "run the same bdsel cache-zeroshot command again to finish it"
        )
    if not path.exists():
        raise CacheError(
            f"select.method={method} needs the zero-shot cache {path}, which does not exist. "
            f"Create it first: bdsel cache-zeroshot --config <the same config> "
            f"(zeroshot.predictor={config.zeroshot.predictor}), or point zeroshot.cache at one"
        )
    spec = read_cache_info(path).get("predictor", {})
    if spec.get("kind") == "holdout" and spec.get("holdout_sha256") != indices_sha256(
        data.holdout_idx
    ):
        raise CacheError(
            f"{path} was made by a hold-out model trained on another hold-out split than this "
            "run's (data.split_seed / train_fraction / holdout_fraction / imbalance differ): "
            "it may have seen this run's training points. Re-run bdsel cache-zeroshot"
        )
    if "il_logprobs" in names and spec.get("kind") != "holdout":
        raise CacheError(
            f"select.method={method} needs an irreducible-loss model: a cache made with "
            f"zeroshot.predictor=holdout; {path} was made by {spec.get('kind')!r}"
        )
    n_classes = data.dataset.n_classes
    out = {}
    for name in names:
        temperature = config.zeroshot.temperature if name == "zs_logprobs" else 1.0
        logprobs = load_zs_logprobs(
            path, data.dataset, n_classes=n_classes, temperature=temperature
        )
        out[name] = logprobs.to(device)
    return out
