"""A run from a Config: the data (cleaned when data.clean says so), the model, the tables
its selector reads, the selector, the optimizer and schedule, the weight EMA (``build_run``).
"""

from __future__ import annotations

import logging

import torch

from bdsel.cleaning import clean_run_data
from bdsel.config import Config
from bdsel.data import Dataset, RunData, derive_run_data, load_dataset, make_image_source
from bdsel.data.batching import ImageSource
from bdsel.distributed import World
from bdsel.evaluation import make_ema
from bdsel.models import Classifier, create_model
from bdsel.names import check_names
from bdsel.optim import EpochSchedule, build_optimizer
from bdsel.runtime import resolve_device
from bdsel.selection import Selector, SelectorContext, selector_class, selector_from_config
from bdsel.step import Run
from bdsel.table import LabelColumn

log = logging.getLogger(__name__)


def build_lookups(
    names: tuple[str, ...],
    config: Config,
    data: RunData,
    device: torch.device,
) -> dict[str, LabelColumn]:
    """Per-index tables a selector asks for, by global index on ``device`` (each row's observed
    label's log-prob and likeliest class: O(N)), checked against the train subset their cache
    was made for (``data``, before any cleaning)."""
    if not names:
        return {}
    # late: open_clip and h5py only when needed
    from bdsel.predict import load_lookups

    return load_lookups(names, config, data, device)


def rescore_size(config: Config, selector: Selector, world: World | None = None) -> int:
    """How many of the n_B candidates select.rescore leaves the candidate forward, once the
    method has a round of scores to go by; never fewer than n_b.
    Off under torchrun: a rank keeps only the scores of the candidates it scored, and its
    next epoch's candidates are mostly ones another rank scored."""
    s = config.select
    if s.rescore >= 1.0:
        return s.n_candidates
    if not selector.keeps_scores():
        raise ValueError(
            f"select.rescore: select.method={s.method} keeps no scores to go by (bayesian does)"
        )
    if world is not None and world.distributed:
        if world.is_main:
            log.warning(
                "select.rescore=%g is off under torchrun: each rank keeps only the scores of "
                "its own candidates; every candidate is scored",
                s.rescore,
            )
        return s.n_candidates
    return max(s.n_selected, round(s.rescore * s.n_candidates))


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """train.compile: true, false, or auto (CUDA only: on CPU it was measured not to pay)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def build_run(config: Config, dataset: Dataset | None = None, world: World | None = None) -> Run:
    """Load data, derive the run's splits, build model, selector and optimizer."""
    check_names(config)
    world = world or World()
    device = resolve_device(config.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    torch.manual_seed(config.seed)
    dataset = dataset if dataset is not None else load_dataset(config.data)
    data = derive_run_data(dataset, config.data, config.seed, config.holdout_fraction)
    cleaned = clean_run_data(config, data)  # data.clean's points dropped (clean-then-train)
    requires = selector_class(config.select.method).requires
    lookups = build_lookups(requires, config, data, device)
    from bdsel.predict import one_time_cost  # late, as build_lookups

    one_time = one_time_cost(config, requires)
    if config.train.budget_s is not None and one_time["predictor_s"] is None:
        raise ValueError(
            "train.budget_s counts the predictor's seconds, and the cache this run reads "
            "holds no record of them (made before bdsel recorded them): remake it with bdsel "
            "cache-zeroshot --overwrite, or leave train.budget_s unset"
        )
    data = cleaned
    n_train = len(data.train_idx) // world.size  # each rank's slice of an epoch
    n_candidates = config.select.n_candidates
    if n_train < n_candidates:
        raise ValueError(
            f"select.n_candidates ({n_candidates}) is larger than the train subset "
            f"({n_train} points{' per rank' if world.distributed else ''})"
        )
    source = make_image_source(  # NHWC batches, as the models' channels-last weights
        dataset,
        device,
        augment=config.data.augment,
        channels_last=True,
    )
    model = create_model(
        config.model.name,
        n_classes=dataset.n_classes,
        in_channels=dataset.in_channels,
        weights=config.model.weights,
    ).to(device)
    context = SelectorContext(  # the config's settings for the method: selector_from_config
        config=config,
        n_classes=dataset.n_classes,
        n_features=model.n_features,
        device=device,
        lookups=lookups,
        extras={"data": data, "source": source},
    )
    selector = selector_from_config(config.select.method, context)
    selector.check_finite = False  # a diverging model is told by its loss, at its step
    run = _assemble(config, data, source, model, selector, world)
    run.one_time = one_time
    return run


def _assemble(
    config: Config,
    data: RunData,
    source: ImageSource,
    model: Classifier,
    selector: Selector,
    world: World,
) -> Run:
    """The run's optimizer, schedule and EMA around its parts (on the source's device)."""
    device = source.device
    steps_per_epoch = len(data.train_idx) // world.size // config.select.n_candidates
    optimizer = build_optimizer(model, config.train)
    scheduler = EpochSchedule(optimizer, config.train, steps_per_epoch)
    return Run(
        config,
        device,
        data,
        source,
        model,
        selector,
        optimizer,
        scheduler,
        steps_per_epoch,
        observed=data.observed.to(device),
        noisy=data.noisy.to(device),
        ema=make_ema(model, config.train.ema_decay) if world.is_main else None,
        n_rescored=rescore_size(config, selector, world),
    )
