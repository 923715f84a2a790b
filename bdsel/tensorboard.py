"""TensorBoard event files beside metrics.jsonl: the same scalars, by optimizer step.

Every evaluation record of a run (``metrics.jsonl``) goes to ``<run_dir>/tb/`` as scalars
tagged with the record's own keys (``test_acc``, ``train_loss``, ``selected_noisy_frac``,
``select/term_zs``, ``wall_s``, ...), at the record's ``step``. A resumed run starts its event
file with a session start at ``purge_step``: TensorBoard drops the events a killed run wrote
after its last checkpoint, so the curves continue without duplicates. Watch a run live with
``tensorboard --logdir runs/``.

The events are written here, synchronously, with TensorBoard's own record format and
protocol buffers: a run writes one event per evaluation, so nothing is gained from
``SummaryWriter``'s writer thread, whose failures (a full disk, a read-only mount) surface
as a traceback from that thread and again, later, from the next call. Here every failure is
an ``OSError`` raised by the call that wrote, for the run directory to report
(:meth:`bdsel.rundir.writer.RunDir.start_tensorboard`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

_file_numbers = itertools.count()  # two logs opened in one second by one process differ


class TensorBoardLog:
    """One event file in ``log_dir`` (created if needed). Raises ``OSError`` from the call
    that failed to write, after cutting the file back to its last whole event; each call's
    events are in the file when it returns."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_file_numbers)}"
        )
        self.path = log_dir / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._size = 0  # bytes of whole events in the file
        try:
            events = [Event(wall_time=time.time(), file_version="brain.Event:2")]
            if purge_step is not None:  # what TensorBoard reads as "a restart at this step"
                start = SessionLog(status=SessionLog.START)
                events.append(Event(wall_time=time.time(), step=purge_step, session_log=start))
            self._write(events)
        except BaseException:
            os.close(self._fd)
            raise

    def add(self, record: dict[str, Any]) -> None:
        """The record's finite numbers (not ``step``, not booleans) as scalars at its step."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=key, simple_value=float(value))
            for key, value in record.items()
            if key != "step"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ]
        step = int(record["step"])
        self._write([Event(wall_time=time.time(), step=step, summary=Summary(value=values))])

    def _write(self, events: list[Any]) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        buffer = io.BytesIO()
        framed = RecordWriter(buffer)  # TensorBoard's framing: length, CRCs, payload
        for event in events:
            framed.write(event.SerializeToString())
        data, written = memoryview(buffer.getvalue()), 0
        try:
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], self._size + written)
        except BaseException:
            with contextlib.suppress(OSError):  # a torn event would end the file's curves
                os.ftruncate(self._fd, self._size)
            raise
        self._size += buffer.tell()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
