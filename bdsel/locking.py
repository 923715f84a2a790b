"""One writer at a time: an exclusive lock on a run directory or a zero-shot cache.

A trainer holds ``<run_dir>/.lock`` for its whole life (``--overwrite`` takes it before it
deletes anything), and ``cache-zeroshot`` holds ``<cache>.lock`` while it writes. The lock is
``flock(2)`` on that file: the operating system releases it when the holder exits, however
it exits (kill -9 included), so a lock left by a dead process never blocks. The holder
writes who it is (pid, host, start time) into the file, which is how a refused second writer
names it. The file is removed on release.

Torch-free, like :mod:`bdsel.rundir`. POSIX only (``fcntl``): on a platform without it the
lock is a no-op with a warning, never an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
log = logging.getLogger(__name__)


class LockedError(RuntimeError):
    """Another live process holds the lock; the message names it."""


def describe_holder(info: dict[str, Any]) -> str:
    """``pid 123 on host h, since 2026-12-01 20:39:25`` from a lock file's record."""
    parts = []
    if info.get("pid") is not None:
        parts.append(f"pid {info['pid']}")
    if info.get("host"):
        parts.append(f"on host {info['host']}")
    if info.get("started") is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        parts.append(f"since {started}")
    if info.get("command"):
        parts.append(f"({info['command']})")
    return " ".join(parts) or "a process that has not said who it is yet"


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder wrote into the lock file ({} when nothing readable is there)."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class ExclusiveLock:
    """An exclusive, non-blocking lock on ``path``: :meth:`acquire` either takes it at once or
    raises :class:`LockedError` naming the holder. ``what`` names the locked thing in that
    message (``run directory runs/x``)."""

    def __init__(self, path: Path, what: str, command: str = "") -> None:
        self.path = Path(path)
        self.what = what
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> ExclusiveLock:
        if self._fd is not None:
            return self
        if fcntl is None:  # pragma: no cover
            log.warning(
                f"no file locking on this platform: nothing stops a second writer of {self.what}"
            )
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = describe_holder(read_holder(self.path))
                raise LockedError(
                    f"{self.what} is in use by another process ({holder}); wait for it to "
                    "finish or stop it, then run this again"
                ) from None
            except OSError:
                os.close(fd)
                raise
            # The holder we waited on may have removed the file between our open and our
            # flock: then we hold a lock on a file nobody else can see. Start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held, so no one can lock the old file after us
        os.close(fd)

    def __enter__(self) -> ExclusiveLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(path: Path, what: str, command: str = "") -> Iterator[ExclusiveLock]:
    """``with locked(path, what):`` holds :class:`ExclusiveLock` for the block."""
    lock = ExclusiveLock(path, what, command).acquire()
    try:
        yield lock
    finally:
        lock.release()
