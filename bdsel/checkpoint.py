"""What a run's checkpoint holds and how it goes back into a run: the modules' states, the
selector's (its random stream included), the timers and where the run stands."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bdsel.distributed import World
from bdsel.rundir import RunDirError
from bdsel.rundir.writer import RunDir
from bdsel.runtime import SectionTimer
from bdsel.step import EpochStats, Run


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
