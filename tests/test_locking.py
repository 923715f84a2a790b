"""One trainer per run directory: a second one stops at once, a killed one's lock does not
block the resume, the lock names its holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bdsel_cli.main import app
from conftest import assert_one_line_error, config_file
from typer.testing import CliRunner

from bdsel.locking import LOCK_FILE, ExclusiveLock, LockedError, read_holder

runner = CliRunner()


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")


def _start_trainer(config: Path, run_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bdsel_cli.main", "train", "-c", str(config)]
    return subprocess.Popen(
        [*cmd, "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), text=True,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the trainer ended early: {proc.stderr.read()}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["epoch"] for x in lines]


def test_a_second_trainer_on_a_running_directory_stops_at_once(
    tmp_path: Path, tiny_config_values: dict
):
    config = config_file(tmp_path, tiny_config_values, epochs=15)
    run_dir = tmp_path / "run"
    first = _start_trainer(config, run_dir)
    try:
        _wait_for(run_dir / "metrics.jsonl", first)
        started = time.perf_counter()
        args = ["train", "-c", str(config), "--run-dir", str(run_dir), "--overwrite"]
        second = runner.invoke(app, [*args, "--set", "seed=1"])
        assert_one_line_error(second, "is in use by another process", f"pid {first.pid}")
        assert "on host" in second.output and "since" in second.output
        assert time.perf_counter() - started < 30  # it did not wait for the first to finish
        assert first.poll() is None, "the first trainer ended before the second was refused"
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    assert _epochs(run_dir) == list(range(1, 16))  # each epoch once: the first run's alone
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seed"] == tiny_config_values["seed"] and summary["epochs_run"] == 15
    assert not (run_dir / LOCK_FILE).exists()  # released and removed at the end


def test_a_killed_trainers_lock_does_not_block_the_resume(tmp_path: Path, tiny_config_values: dict):
    config = config_file(tmp_path, tiny_config_values, epochs=15)
    run_dir = tmp_path / "run"
    proc = _start_trainer(config, run_dir)
    _wait_for(run_dir / "checkpoint.pt", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run_dir / LOCK_FILE).exists()  # the file stays; the OS released the flock
    assert read_holder(run_dir / LOCK_FILE)["pid"] == proc.pid
    resumed = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _epochs(run_dir) == list(range(1, 16))


def test_the_lock_names_its_holder_and_is_taken_once(tmp_path: Path):
    path = tmp_path / "x.lock"
    with ExclusiveLock(path, "thing X", "bdsel train -c a.yaml") as lock:
        assert lock.held and read_holder(path)["pid"] == os.getpid()
        # flock locks belong to an open file: a second open in this process is refused too
        with pytest.raises(LockedError, match=r"thing X is in use .*pid \d+ on host .*a\.yaml"):
            ExclusiveLock(path, "thing X").acquire()
    assert not path.exists()
    ExclusiveLock(path, "thing X").acquire().release()  # free again
