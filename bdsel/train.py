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
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bdsel.assemble import build_run, compile_enabled
from bdsel.checkpoint import TrainState, load_checkpoint, save_checkpoint
from bdsel.config import Config
from bdsel.data import Dataset
from bdsel.distributed import (
    World,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    init_world,
)
from bdsel.evaluation import Evaluator
from bdsel.forward import autocast_for, candidate_autocast
from bdsel.locking import LockedError
from bdsel.rundir import METRICS, RunDirError, acc_key, read_metrics
from bdsel.rundir.writer import RunDir, lock_rundir
from bdsel.runtime import (
    AUGMENTATION,
    PERMUTATION,
    SELECTION,
    SectionTimer,
    stream_generator,
)
from bdsel.step import EpochStats, Run, Stepper
from bdsel.targets import epochs_to_target

PROGRESS_EVERY = 50  # steps between progress-bar updates: the only host syncs in an epoch

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the run stopped with its last good checkpoint kept."""


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
        epochs = finished.get("epochs_run", config.train.epochs)
        why = "" if epochs == config.train.epochs else ", its train.budget_s spent"
        log.warning(f"{run_dir} is complete ({epochs} epochs{why}): nothing to resume")
        if (damage := RunDir(run_dir).finished_damage(config, epochs)) is not None:
            log.warning(damage)
        return finished  # a finished run is never rewritten
    world = init_world(config.device)
    run = build_run(config, dataset, world)
    with _locked_rundir(Path(run_dir), config, mode, world) as rundir:
        return _train(run, rundir, mode, world, on_epoch, progress)


@dataclass
class Loop:
    """A run in the run directory it holds, between two epochs: what an epoch, its end and
    the summary work on."""

    run: Run
    rundir: RunDir
    world: World
    stepper: Stepper
    state: TrainState
    evaluator: Evaluator | None  # on the rank that evaluates
    on_epoch: Callable[[dict[str, Any]], None] | None
    progress: Any
    task: Any = None  # the progress bar's task
    train_idx: torch.Tensor = field(init=False)  # the train subset, on the device
    has_noise: bool = field(init=False)  # whether any training label was made wrong

    def left_s(self) -> float:
        """Seconds of train.budget_s left: minus the predictor's and the training so far
        (inf without a budget)."""
        budget = self.run.config.train.budget_s
        if budget is None:
            return float("inf")
        return budget - self.run.one_time.get("predictor_s", 0.0) - self.state.wall_s

    @property
    def out_of_time(self) -> bool:
        """Whether train.budget_s is spent, as rank 0 sees it (every rank stops together)."""
        if self.run.config.train.budget_s is None:
            return False
        return bool(broadcast_from_main(self.left_s() <= 0))

    def __post_init__(self) -> None:
        data = self.run.data
        self.train_idx = data.train_idx.to(self.run.device)
        self.has_noise = bool(data.noisy[data.train_idx].any())


def _train(
    run: Run,
    rundir: RunDir,
    mode: str,
    world: World,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    progress: Any,
) -> dict[str, Any]:
    """The loop of :func:`train`, in a run directory this process holds the lock of."""
    if not world.is_main:
        on_epoch, progress = None, None
    loop = Loop(run, rundir, world, _stepper(run, world), TrainState(),
                Evaluator(run.config, run.data, run.source) if world.is_main else None,
                on_epoch, progress)  # fmt: skip
    _start(loop, mode)
    for epoch in range(loop.state.epoch, run.config.train.epochs):
        if loop.out_of_time:
            break  # a resumed run that had already spent its budget
        _train_epoch(loop, epoch)
        _end_epoch(loop)
    return _finish(loop)


def _stepper(run: Run, world: World) -> Stepper:
    """The step's forwards: DDP-wrapped under torchrun, compiled where train.compile says."""
    config, device, model = run.config, run.device, run.model
    trainer: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    compiled = compile_enabled(config.train.compile, device)
    return Stepper(
        run,
        score_forward=torch.compile(model) if compiled else model,
        train_forward=torch.compile(trainer) if compiled else trainer,
        score_autocast=candidate_autocast(device),
        autocast=autocast_for(device),
        timer=SectionTimer(device),
    )


def _start(loop: Loop, mode: str) -> None:
    """Resume from the checkpoint, open TensorBoard, run the selector's one-off work (SVP's
    proxy training counts as selection time and wall time), show the progress bar."""
    run, stepper, world = loop.run, loop.stepper, loop.world
    if mode == "resume":
        loop.state, stepper.stats = load_checkpoint(loop.rundir, run, stepper.timer, world)
        barrier()  # every rank has read the checkpoint before rank 0 touches the directory
        if world.is_main:
            _restore_metrics(loop)
    if world.is_main:
        loop.rundir.start_tensorboard(loop.state.step if mode == "resume" else None)
    t_prepare = time.perf_counter()
    run.selector.prepare()
    if mode != "resume":
        prepare_s = time.perf_counter() - t_prepare
        loop.state.wall_s += prepare_s
        stepper.timer.total += prepare_s
    if loop.progress is not None:
        total = run.config.train.epochs * run.steps_per_epoch
        loop.task = loop.progress.add_task("train", total=total, completed=loop.state.step)
    run.model.train()


def _train_epoch(loop: Loop, epoch: int) -> None:
    """Every step of ``epoch``: one permutation for all ranks, cut into a slice per rank;
    augmentation and selection draw from per-rank streams."""
    run, state, world, seed = loop.run, loop.state, loop.world, loop.run.config.seed
    t0 = time.perf_counter()
    run.selector.set_epoch(epoch)
    g_perm = stream_generator(seed, epoch, PERMUTATION, run.device)
    g_aug = stream_generator(seed, epoch, AUGMENTATION, run.device, world.rank)
    g_sel = stream_generator(seed, epoch, SELECTION, run.device, world.rank)
    order = run.selector.epoch_order(loop.train_idx, g_perm)
    per_rank = len(order) // world.size
    order = order[world.rank * per_rank : (world.rank + 1) * per_rank]
    n_steps = per_rank // run.config.select.n_candidates  # fewer in a pruned epoch
    run.scheduler.begin_epoch(epoch, n_steps)
    if loop.task is not None:  # the steps left: this epoch's, then full epochs
        left = run.config.train.epochs - epoch - 1
        loop.progress.update(loop.task, total=state.step + n_steps + left * run.steps_per_epoch)
    # train.budget_s ends a single process's run at the step that spends it; under torchrun
    # (where the ranks would have to agree at every step) at the epoch's end.
    deadline = t0 + loop.left_s() if not world.distributed else float("inf")
    for i, n in enumerate(loop.stepper.epoch(order, (g_aug, g_sel))):
        state.samples_seen += n * world.size
        state.step += 1
        if loop.task is not None and ((i + 1) % PROGRESS_EVERY == 0):
            loop.progress.update(loop.task, completed=state.step)
        if time.perf_counter() >= deadline:
            break  # the budget is spent: the rest of the epoch is not trained
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    state.wall_s += time.perf_counter() - t0
    state.epoch = epoch + 1
    if loop.task is not None:
        loop.progress.update(loop.task, completed=state.step)


def _end_epoch(loop: Loop) -> None:
    """Stop on a NaN/Inf loss; evaluate (rank 0) and log every ``eval.every`` epochs and at
    the end; checkpoint."""
    run, state, stepper, world = loop.run, loop.state, loop.stepper, loop.world
    config = run.config
    if (bad_step := _first_nonfinite_step(stepper.stats, state.step, world)) is not None:
        done = state.epoch - 1
        kept = f"the checkpoint of epoch {done} is kept" if done else "no checkpoint yet"
        raise TrainingDiverged(
            f"the training loss became NaN or Inf at epoch {state.epoch}, step {bad_step}: "
            f"stopped ({kept}); lower train.lr or check the data, then start again with "
            "--overwrite"
        )
    last = state.epoch == config.train.epochs or loop.out_of_time
    if state.epoch % config.eval.every == 0 or last:
        totals = _reduce_stats(stepper.stats, world)
        if loop.evaluator is not None:
            metrics = loop.evaluator(run.model, run.ema)
            state.best_acc = max(state.best_acc, metrics[f"{loop.evaluator.prefix}_acc"])
            record = _record(loop, metrics, totals)
            loop.rundir.append_metrics(record)
            if loop.on_epoch is not None:
                loop.on_epoch(record)
        stepper.stats = EpochStats.zeros(run.device)
    if world.is_main:
        save_checkpoint(loop.rundir, run, state, stepper.timer, stepper.stats, world)
    barrier()


def _finish(loop: Loop) -> dict[str, Any]:
    summary = summarize(loop.run.config, read_metrics(loop.rundir.path))
    if loop.state.epoch < loop.run.config.train.epochs:  # train.budget_s ended it
        summary["stopped_by_budget"] = loop.run.config.train.budget_s
    if loop.run.data.cleaning is not None:
        summary["cleaning"] = loop.run.data.cleaning  # data.clean: flagged, precision, recall
    if loop.world.is_main:
        loop.rundir.write_summary(summary)
    barrier()
    return summary


def _record(loop: Loop, metrics: dict[str, float], totals: EpochStats | None) -> dict[str, Any]:
    """One line of metrics.jsonl: the evaluation and the selected points since the last
    (``totals``; None for a record rebuilt on resume, whose steps are gone)."""
    run, state = loop.run, loop.state
    has_noise = loop.has_noise
    n_pts = max(totals.n_points, 1) if totals is not None else 1
    record: dict[str, Any] = {
        "epoch": state.epoch,
        "step": state.step,
        "samples_seen": state.samples_seen,
        **metrics,
        "train_loss": float(totals.loss_sum) / n_pts if totals is not None else None,
        "selected_noisy_frac": (
            float(totals.noisy_sum) / n_pts if totals is not None and has_noise else None
        ),
        "base_noisy_frac": run.data.base_noisy_frac if has_noise else None,
        "wall_s": state.wall_s,
        **run.one_time,  # predictor_s: the clock end to end is predictor_s + wall_s
        "selection_s": loop.stepper.timer.seconds(),
        "lr": run.optimizer.param_groups[0]["lr"],
    }
    if totals is None:
        record["rebuilt"] = True
        return record
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


def _restore_metrics(loop: Loop) -> None:
    """Check metrics.jsonl against the checkpoint of ``state.epoch`` and rewrite it with the
    records of epochs 1..epoch. A lost record of the checkpoint's own epoch is rebuilt: its
    model (and EMA) is evaluated again; what only the epoch's steps knew (train loss, noise
    among selected) is null. Whatever was damaged or lost is logged, never dropped silently."""
    config, state, rundir = loop.run.config, loop.state, loop.rundir
    check = rundir.check_metrics(state.epoch, config.train.epochs, config.eval.every)
    if state.epoch in check.lost and loop.evaluator is not None:
        check.rebuild(_record(loop, loop.evaluator(loop.run.model, loop.run.ema), None))
    rundir.write_metrics(check.records)
    if (message := check.report(rundir.path / METRICS)) is not None:
        log.warning(message)


def summarize(config: Config, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json: the run's final numbers, keyed by the evaluation split (test_acc ...)."""
    last = metrics[-1] if metrics else {}
    key = acc_key(config.eval_split)
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
        "predictor_s": last.get("predictor_s"),
        "predictor_test_acc": last.get("predictor_test_acc"),
        "selection_s": last.get("selection_s"),
        "epochs_to_target": {
            f"{t:g}": epochs_to_target(metrics, t, key) for t in config.report.targets
        },
    }
