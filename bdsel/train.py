"""The training loop, one for every selection method.

Per epoch: a permutation of the train subset cut into candidate batches of n_B; for each,
an optional no-grad candidate forward, the selector's choice of n_b points, one
forward/backward/step on those, and the selector's ``observe`` (posterior update). Test
accuracy every ``eval.every`` epochs, a checkpoint after every epoch.

Random streams are derived from (seed, epoch), not carried from step to step, so a run
resumed from an epoch-end checkpoint replays exactly what an uninterrupted run would do.
The step never syncs the host: statistics accumulate on the device and are read once per
log interval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from bdsel.cleaning import clean_run_data
from bdsel.config import Config
from bdsel.data import Dataset, RunData, derive_run_data, load_dataset, make_image_source
from bdsel.data.batching import FolderImages, ImageSource
from bdsel.distributed import (
    World,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    init_world,
)
from bdsel.engine import (
    AUGMENTATION,
    PERMUTATION,
    SELECTION,
    SectionTimer,
    autocast_for,
    build_optimizer,
    candidate_forward,
    lr_factor,
    resolve_device,
    stream_generator,
)
from bdsel.evaluation import Evaluator, WeightEMA, make_ema
from bdsel.locking import LockedError
from bdsel.models import Classifier, create_model
from bdsel.registries import check_names
from bdsel.rundir import METRICS, RunDirError, acc_key, epochs_to_target
from bdsel.runlog import RunDir, lock_rundir
from bdsel.selection import (
    Candidates,
    Selection,
    Selector,
    SelectorContext,
    prefilter,
    selector_class,
    selector_from_config,
)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the run stopped with its last good checkpoint kept."""


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one training run holds, built from a config before any step is taken."""

    config: Config
    device: torch.device
    data: RunData
    source: ImageSource
    model: Classifier
    selector: Selector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    observed: torch.Tensor  # int64 [N] on the device
    noisy: torch.Tensor  # bool [N] on the device
    ema: WeightEMA | None  # the weight EMA (train.ema_decay > 0), on the rank that evaluates
    n_prefiltered: int  # candidates left by select.prefilter (n_B when it is off)


def build_lookups(
    names: tuple[str, ...], config: Config, data: RunData, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-index quantities a selector asks for, as device tensors indexed by global index."""
    if not names:
        return {}
    from bdsel.zeroshot.run import load_lookups  # late: open_clip and h5py only when needed

    return load_lookups(names, config, data, device)


def prefilter_size(config: Config, selector: Selector) -> int:
    """How many of the n_B candidates select.prefilter leaves for the candidate forward (n_B
    when it is off); never fewer than n_b."""
    s = config.select
    if s.prefilter >= 1.0:
        return s.n_candidates
    if not selector.has_plausibility():
        raise ValueError(
            f"select.prefilter: select.method={s.method} has no cached score "
            "to prefilter with (bayesian, rho_loss and irreducible_loss have)"
        )
    return max(s.n_selected, round(s.prefilter * s.n_candidates))


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """train.compile: true, false, or auto (CUDA only: on CPU it was measured not to pay)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def build_run(config: Config, dataset: Dataset | None = None, world: World | None = None) -> Run:
    """Load data, derive the run's splits, build model, selector and optimizer."""
    check_names(config)
    world = world or World()
    device = resolve_device(config.train.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    torch.manual_seed(config.seed)
    dataset = dataset if dataset is not None else load_dataset(config.data)
    data = derive_run_data(dataset, config.data, config.seed)
    cls = selector_class(config.select.method)
    # Tables by global index, checked against the whole train subset they were made for;
    # data.clean then drops points from it (clean-then-train).
    lookups = build_lookups(cls.requires, config, data, device)
    data = clean_run_data(config, data)
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
        num_workers=config.data.num_workers,
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
    n_prefiltered = prefilter_size(config, selector)
    optimizer = build_optimizer(model, config.train)
    steps_per_epoch = n_train // n_candidates
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.train, steps_per_epoch)
    )
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
        n_prefiltered=n_prefiltered,
    )


@dataclass
class EpochStats:
    """Device-side sums since the last evaluation."""

    loss_sum: torch.Tensor
    noisy_sum: torch.Tensor
    n_points: int
    scalars: dict[str, torch.Tensor]
    n_steps: int
    # Index (in n_steps) of the first step whose loss was NaN or Inf, -1 for none; read once
    # per epoch, so the step itself never syncs the host.
    first_nonfinite: torch.Tensor | None = None

    @classmethod
    def zeros(cls, device: torch.device) -> EpochStats:
        z = torch.zeros((), device=device)
        return cls(z.clone(), z.clone(), 0, {}, 0, torch.full((), -1, device=device))

    def state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum.cpu(),
            "noisy_sum": self.noisy_sum.cpu(),
            "n_points": self.n_points,
            "scalars": {k: v.cpu() for k, v in self.scalars.items()},
            "n_steps": self.n_steps,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochStats:
        return cls(
            state["loss_sum"].to(device),
            state["noisy_sum"].to(device),
            state["n_points"],
            {k: v.to(device) for k, v in state["scalars"].items()},
            state["n_steps"],
            torch.full((), -1, device=device),  # a checkpoint is only written while finite
        )


@dataclass
class StepTools:
    """What every step uses besides the run: the scoring and training forwards (compiled or
    DDP-wrapped, or the model itself), their autocasts, and the selection timer."""

    score_forward: Callable
    train_forward: Callable
    score_autocast: Callable
    autocast: Callable
    timer: SectionTimer


def choose(
    run: Run,
    candidates: Candidates,
    generator: torch.Generator,
    stats: EpochStats,
    tools: StepTools,
) -> tuple[Candidates, Selection]:
    """The selection half of a step: prefilter, candidate forward (when the method reads it),
    ``select``. Returns the candidates it chose from (fewer after a prefilter) and the choice.

    Its phases are labelled for torch.profiler (``bdsel/...``; benchmarks/bench_step.py
    --profile prints the breakdown); a label costs about a microsecond when nothing profiles.
    """
    tools.timer.start()
    if run.n_prefiltered < candidates.indices.shape[0]:
        with record_function("bdsel/prefilter"):
            plausibility = run.selector.plausibility(candidates)
            if plausibility is not None:
                n_classes = run.data.dataset.n_classes
                candidates = prefilter(candidates, plausibility, run.n_prefiltered, n_classes)
                noisy = run.noisy[candidates.indices].float().mean()
                prior = stats.scalars.get("prefiltered_noisy", 0)
                stats.scalars["prefiltered_noisy"] = prior + noisy
    logits = features = None
    if run.selector.wants_forward():
        with record_function("bdsel/candidate_forward"):
            bn = run.config.select.candidate_bn
            scored = candidate_forward(
                tools.score_forward, candidates.inputs, tools.score_autocast, bn
            )
            logits, features = scored.logits, scored.features
    with record_function("bdsel/select"):
        idx, labels = candidates.indices, candidates.labels
        selection = run.selector.select(
            idx, labels, logits, features, generator=generator, inputs=candidates.inputs
        )
    tools.timer.stop()
    return candidates, selection


def learn(
    run: Run,
    candidates: Candidates,
    selection: Selection,
    x: torch.Tensor,
    stats: EpochStats,
    tools: StepTools,
) -> int:
    """The training half of a step on the chosen points' inputs ``x``: forward/backward,
    optimizer and EMA, ``observe``, statistics on the device. Returns the points trained on."""
    with record_function("bdsel/train_forward_backward"):
        pos = selection.positions
        idx, y = candidates.indices[pos], candidates.labels[pos]
        with tools.autocast():
            logits, features = tools.train_forward(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        weights = selection.weights
        loss = (losses * weights).mean() if weights is not None else losses.mean()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with record_function("bdsel/optimizer"):
        run.optimizer.step()
        run.scheduler.step()
    if run.ema is not None:
        with record_function("bdsel/ema_update"):
            run.ema.update(run.model)

    with record_function("bdsel/observe"):
        run.selector.observe(idx, y, logits, features)

    with record_function("bdsel/bookkeeping"):
        bad = ~torch.isfinite(loss.detach()) & (stats.first_nonfinite < 0)
        stats.first_nonfinite = torch.where(bad, stats.n_steps, stats.first_nonfinite)
        stats.loss_sum += losses.detach().sum()
        stats.noisy_sum += run.noisy[idx].sum()
        stats.n_points += int(pos.shape[0])
        stats.n_steps += 1
        for k, v in selection.scalars.items():
            stats.scalars[k] = stats.scalars.get(k, 0) + v.detach().float()
    return int(pos.shape[0])


def train_step(
    run: Run,
    candidates: Candidates,
    generator: torch.Generator,
    stats: EpochStats,
    tools: StepTools,
) -> int:
    """Select from one candidate batch, take one optimizer step; returns the points trained on."""
    candidates, selection = choose(run, candidates, generator, stats, tools)
    return learn(run, candidates, selection, candidates.inputs[selection.positions], stats, tools)


def epoch_steps(
    run: Run,
    order: torch.Tensor,
    generators: tuple[torch.Generator, torch.Generator],
    stats: EpochStats,
    tools: StepTools,
) -> Iterator[int]:
    """Every step of one epoch over ``order`` in candidate batches; yields the points each
    trained on. ``generators``: the epoch's (augmentation, selection) streams.

    On folder data, when this epoch's selection reads no candidate forward, the epoch's
    choices are made first and only the chosen images are decoded (by the DataLoader's
    workers, prefetched): a step then decodes n_b images, not n_B."""
    g_aug, g_sel = generators
    n = run.config.select.n_candidates
    if isinstance(run.source, FolderImages) and not run.selector.wants_forward():
        chosen = []
        for start in range(0, len(order) - n + 1, n):
            idx = order[start : start + n]
            chosen.append(
                choose(run, Candidates(idx, None, run.observed[idx]), g_sel, stats, tools)
            )
        picks = [c.indices[s.positions] for c, s in chosen]
        decoded = run.source.iter_index_batches("train", picks, generator=g_aug)
        for (candidates, selection), (_, x) in zip(chosen, decoded, strict=True):
            yield learn(run, candidates, selection, x, stats, tools)
        return
    for idx, inputs in run.source.iter_batches("train", order, n, generator=g_aug, drop_last=True):
        yield train_step(run, Candidates(idx, inputs, run.observed[idx]), g_sel, stats, tools)


@contextlib.contextmanager
def _locked_rundir(path: Path, config: Config, mode: str, world: World) -> Iterator[RunDir]:
    """Rank 0 takes the run directory's lock (held until the block ends), then checks and
    creates the directory; an error on rank 0 stops every rank."""
    error, lock = None, None
    if world.is_main:
        try:
            lock = lock_rundir(path, mode)
            RunDir.prepare(path, config, mode)  # type: ignore[arg-type]
        except (RunDirError, LockedError) as exc:
            error = str(exc)
            if lock is not None:
                lock.release()
    error = broadcast_from_main(error)
    if error is not None:
        raise RunDirError(error)
    rundir = RunDir(path)
    try:
        yield rundir
    finally:
        rundir.close()  # the TensorBoard writer, if any
        if lock is not None:
            lock.release()


def _reduce_stats(stats: EpochStats, world: World) -> EpochStats:
    """The statistics of every rank's selected points since the last evaluation."""
    if not world.distributed:
        return stats
    keys = sorted(stats.scalars)
    packed = torch.stack(
        [stats.loss_sum, stats.noisy_sum, stats.loss_sum.new_tensor(float(stats.n_points))]
        + [stats.scalars[k] for k in keys]
    )
    all_reduce_sum(packed)
    scalars = {k: packed[3 + i] / world.size for i, k in enumerate(keys)}
    return EpochStats(packed[0], packed[1], int(packed[2]), scalars, stats.n_steps)


@dataclass
class TrainState:
    """Where a run stands between epochs: what a checkpoint holds besides module states."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    samples_seen: int = 0
    wall_s: float = 0.0  # training time (selection included, evaluation excluded)
    best_acc: float = 0.0


def save_checkpoint(
    rundir: RunDir,
    run: Run,
    state: TrainState,
    timer: SectionTimer,
    stats: EpochStats,
    world: World,
) -> None:
    """Everything a resumed run needs to continue exactly as an uninterrupted one."""
    rundir.save_checkpoint(
        {
            "model": run.model.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "selector": run.selector.state_dict(),
            **dataclasses.asdict(state),
            "selection_s": timer.seconds(),
            "stats": stats.state(),
            "world_size": world.size,
        }
    )


def load_checkpoint(
    rundir: RunDir, run: Run, timer: SectionTimer, world: World
) -> tuple[TrainState, EpochStats]:
    """Restore ``run``'s modules and the timer from the run directory's checkpoint."""
    ckpt = rundir.load_checkpoint(map_location=run.device)
    if ckpt.get("world_size", 1) != world.size:
        raise RunDirError(
            f"--resume: the checkpoint was written by {ckpt.get('world_size', 1)} processes, "
            f"this run has {world.size}; resume at the same world size"
        )
    if (ckpt.get("ema") is None) != (run.ema is None) and world.is_main:
        raise RunDirError("--resume: the checkpoint's weight EMA does not match train.ema_decay")
    run.model.load_state_dict(ckpt["model"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.selector.load_state_dict(ckpt["selector"])
    state = TrainState(**{f.name: ckpt[f.name] for f in dataclasses.fields(TrainState)})
    timer.total = ckpt["selection_s"]
    return state, EpochStats.from_state(ckpt["stats"], run.device)


def train(
    config: Config,
    run_dir: Path,
    *,
    mode: Literal["new", "resume", "overwrite"] = "new",
    dataset: Dataset | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its summary.

    ``progress`` is an optional rich Progress; ``on_epoch`` receives each metrics record.
    Under torchrun each rank trains on its slice of every epoch with n_B candidates and n_b
    selected per rank (per step, world_size * n_b points in all); rank 0 keeps the weight
    EMA, evaluates and writes.
    """
    if mode == "resume" and (finished := RunDir(run_dir).finished_summary(config)) is not None:
        log.warning(f"{run_dir} is complete ({config.train.epochs} epochs): nothing to resume")
        if (damage := RunDir(run_dir).finished_damage(config)) is not None:
            log.warning(damage)
        return finished  # a finished run is never rewritten
    world = init_world(config.train.device)
    run = build_run(config, dataset, world)
    with _locked_rundir(Path(run_dir), config, mode, world) as rundir:
        return _train(run, rundir, mode, world, on_epoch, progress)


def _train(
    run: Run,
    rundir: RunDir,
    mode: str,
    world: World,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    progress: Any,
) -> dict[str, Any]:
    """The loop of :func:`train`, in a run directory this process holds the lock of."""
    config = run.config
    if not world.is_main:
        on_epoch, progress = None, None
    device, model = run.device, run.model
    autocast = autocast_for(device)
    score_autocast = autocast_for(device, config.select.candidate_precision)
    trainer: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    compiled = compile_enabled(config.train.compile, device)
    train_forward = torch.compile(trainer) if compiled else trainer
    score_forward = torch.compile(model) if compiled else model
    evaluator = Evaluator(config, run.data, run.source) if world.is_main else None
    train_idx = run.data.train_idx.to(device)
    has_noise = bool(run.data.noisy[run.data.train_idx].any())
    base_noisy = run.data.base_noisy_frac if has_noise else None

    state = TrainState()
    timer = SectionTimer(device)
    tools = StepTools(score_forward, train_forward, score_autocast, autocast, timer)
    stats = EpochStats.zeros(device)
    if mode == "resume":
        state, stats = load_checkpoint(rundir, run, timer, world)
        barrier()  # every rank has read the checkpoint before rank 0 touches the directory
        if world.is_main:
            _restore_metrics(rundir, state, timer, run, has_noise, evaluator)
    if world.is_main and config.train.tensorboard:
        rundir.start_tensorboard(state.step if mode == "resume" else None)

    # One-off selection work (SVP's proxy training) counts as selection time and wall time.
    t_prepare = time.perf_counter()
    run.selector.prepare()
    if mode != "resume":
        prepare_s = time.perf_counter() - t_prepare
        state.wall_s += prepare_s
        timer.total += prepare_s
    epochs = config.train.epochs
    task = None
    if progress is not None:
        task = progress.add_task("train", total=epochs * run.steps_per_epoch, completed=state.step)
    model.train()
    for epoch in range(state.epoch, epochs):
        # -- draw candidates and step
        t0 = time.perf_counter()
        run.selector.set_epoch(epoch)
        # One permutation for all ranks, cut into a slice per rank; augmentation and selection
        # draw from per-rank streams.
        g_perm = stream_generator(config.seed, epoch, PERMUTATION, device)
        g_aug = stream_generator(config.seed, epoch, AUGMENTATION, device, world.rank)
        g_sel = stream_generator(config.seed, epoch, SELECTION, device, world.rank)
        order = run.selector.epoch_order(train_idx, g_perm)
        per_rank = len(order) // world.size
        order = order[world.rank * per_rank : (world.rank + 1) * per_rank]
        for i, n in enumerate(epoch_steps(run, order, (g_aug, g_sel), stats, tools)):
            state.samples_seen += n * world.size
            state.step += 1
            if task is not None and ((i + 1) % config.train.log_every == 0):
                progress.update(task, completed=state.step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        state.wall_s += time.perf_counter() - t0
        state.epoch = epoch + 1
        if task is not None:
            progress.update(task, completed=state.step)

        if (bad_step := _first_nonfinite_step(stats, state.step, world)) is not None:
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint yet"
            raise TrainingDiverged(
                f"the training loss became NaN or Inf at epoch {state.epoch}, step {bad_step}: "
                f"stopped ({kept}); lower train.lr or check the data, then start again with "
                "--overwrite"
            )

        # -- evaluate (rank 0) and log
        if state.epoch % config.eval.every == 0 or state.epoch == epochs:
            totals = _reduce_stats(stats, world)
            if evaluator is not None:
                metrics = evaluator(model, run.ema)
                state.best_acc = max(state.best_acc, metrics[f"{evaluator.prefix}_acc"])
                record = _record(state, metrics, totals, timer, run, has_noise, base_noisy)
                rundir.append_metrics(record)
                if on_epoch is not None:
                    on_epoch(record)
            stats = EpochStats.zeros(device)

        # -- save
        if world.is_main:
            save_checkpoint(rundir, run, state, timer, stats, world)
        barrier()

    summary = summarize(config, rundir.read_metrics())
    if run.data.cleaning is not None:
        summary["cleaning"] = run.data.cleaning  # data.clean: flagged, precision, recall
    if world.is_main:
        rundir.write_summary(summary)
    barrier()
    return summary


def _record(
    state: TrainState,
    metrics: dict[str, float],
    totals: EpochStats,
    timer: SectionTimer,
    run: Run,
    has_noise: bool,
    base_noisy: float | None,
) -> dict[str, Any]:
    """One line of metrics.jsonl: the evaluation and the selected points since the last."""
    n_pts = max(totals.n_points, 1)
    record: dict[str, Any] = {
        "epoch": state.epoch,
        "step": state.step,
        "samples_seen": state.samples_seen,
        **metrics,
        "train_loss": float(totals.loss_sum) / n_pts,
        "selected_noisy_frac": float(totals.noisy_sum) / n_pts if has_noise else None,
        "base_noisy_frac": base_noisy,
        "wall_s": state.wall_s,
        "selection_s": timer.seconds(),
        "lr": run.optimizer.param_groups[0]["lr"],
    }
    for k, v in totals.scalars.items():
        record[f"select/{k}"] = float(v) / max(totals.n_steps, 1)
    return record


def _first_nonfinite_step(stats: EpochStats, step: int, world: World) -> int | None:
    """The global step (1-based) of the first NaN/Inf loss since the last evaluation, on any
    rank; None when there was none. One host sync."""
    if stats.first_nonfinite is None:
        return None
    first = torch.where(stats.first_nonfinite < 0, stats.n_steps, stats.first_nonfinite)
    first = int(all_reduce_min(first.clone()))
    return None if first >= stats.n_steps else step - stats.n_steps + first + 1


def _restore_metrics(
    rundir: RunDir,
    state: TrainState,
    timer: SectionTimer,
    run: Run,
    has_noise: bool,
    evaluator: Evaluator | None,
) -> None:
    """Check metrics.jsonl against the checkpoint of ``state.epoch`` and rewrite it with the
    records of epochs 1..epoch. A lost record of the checkpoint's own epoch is rebuilt: its
    model (and EMA) is evaluated again; what only the epoch's steps knew (train loss, noise
    among selected) is null. Whatever was damaged or lost is logged, never dropped silently."""
    config = run.config
    check = rundir.check_metrics(state.epoch, config.train.epochs, config.eval.every)
    if state.epoch in check.lost and evaluator is not None:
        check.rebuild(
            {
                "epoch": state.epoch,
                "step": state.step,
                "samples_seen": state.samples_seen,
                **evaluator(run.model, run.ema),
                "train_loss": None,
                "selected_noisy_frac": None,
                "base_noisy_frac": run.data.base_noisy_frac if has_noise else None,
                "wall_s": state.wall_s,
                "selection_s": timer.total,
                "lr": run.optimizer.param_groups[0]["lr"],
                "rebuilt": True,
            }
        )
    rundir.write_metrics(check.records)
    if (message := check.report(rundir.path / METRICS)) is not None:
        log.warning(message)


def summarize(config: Config, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json: the run's final numbers, keyed by the evaluation split (test_acc ...)."""
    last = metrics[-1] if metrics else {}
    key = acc_key(config.eval.split)
    return {
        "status": "complete",
        "method": config.select.method,
        "dataset": config.data.name,
        "seed": config.seed,
        "epochs_run": last.get("epoch", 0),
        "steps": last.get("step", 0),
        "samples_seen": last.get("samples_seen", 0),
        f"final_{key}": last.get(key),
        f"best_{key}": max((r[key] for r in metrics), default=None),
        "wall_s": last.get("wall_s"),
        "selection_s": last.get("selection_s"),
        "epochs_to_target": {
            f"{t:g}": epochs_to_target(metrics, t, key) for t in config.report.targets
        },
    }
