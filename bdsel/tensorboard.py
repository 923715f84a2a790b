"""TensorBoard event files beside metrics.jsonl: the same scalars, by optimizer step.

Every evaluation record of a run (``metrics.jsonl``) goes to ``<run_dir>/tb/`` as scalars
tagged with the record's own keys (``test_acc``, ``train_loss``, ``selected_noisy_frac``,
``select/term_zs``, ``wall_s``, ...), at the record's ``step``. A resumed run opens the writer
with ``purge_step``: events a killed run wrote after its last checkpoint are dropped by
TensorBoard, so the curves continue without duplicates. Watch a run live with
``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


class TensorBoardLog:
    """A SummaryWriter for one run directory's ``tb/`` folder."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def add(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
