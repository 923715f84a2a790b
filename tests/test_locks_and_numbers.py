"""Issue 29: one writer per run directory and per cache, metrics whose epochs go forward, a
report that survives a full disk, numbers as users type them, empty configs, CLIP offline."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from bdsel_cli.main import app
from test_reliability import assert_one_line_error
from typer.testing import CliRunner

from bdsel.config import ConfigError, load_config, parse_override
from bdsel.locking import LOCK_FILE, ExclusiveLock, LockedError, read_holder
from bdsel.predict import cache_lock_path
from bdsel.rundir import MetricsOrderError, read_metrics
from bdsel.rundir.writer import check_metrics_for_resume
from bdsel.zeroshot.provenance import split_differences

runner = CliRunner()


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")


def _config_file(tmp_path: Path, values: dict, epochs: int) -> Path:
    values = dict(values, train={"epochs": epochs, "log_every": 5})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


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


# ----------------------------------------------------------------------------- the lock


def test_a_second_trainer_on_a_running_directory_stops_at_once(
    tmp_path: Path, tiny_config_values: dict
):
    config = _config_file(tmp_path, tiny_config_values, epochs=15)
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
    config = _config_file(tmp_path, tiny_config_values, epochs=15)
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


def test_a_cache_being_written_is_locked(tmp_path: Path, tiny_config_values: dict):
    config = _config_file(tmp_path, tiny_config_values, epochs=1)
    out = tmp_path / "zs.h5"
    with ExclusiveLock(cache_lock_path(out), "the zero-shot cache"):
        result = runner.invoke(app, ["cache-zeroshot", "-c", str(config), "--out", str(out)])
        assert_one_line_error(result, "is in use by another process", f"pid {os.getpid()}")
    assert not out.exists() and not list(tmp_path.glob("zs.h5.partial*"))


# ----------------------------------------------------------------------------- epochs in order


def _lines(*epochs: int) -> str:
    return "".join(json.dumps({"epoch": e, "test_acc": 0.5}) + "\n" for e in epochs)


def test_metrics_whose_epochs_repeat_or_go_back_are_refused(tmp_path: Path):
    from test_report import write_run

    run = write_run(tmp_path / "runs" / "a", [0.5, 0.6, 0.7])
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 2, "test_acc": 0.9}) + "\n")
    with pytest.raises(MetricsOrderError, match="line 4 goes back to epoch 2 after epoch 3"):
        read_metrics(run)
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert_one_line_error(result, "metrics.jsonl: line 4 goes back to epoch 2", "two runs")
    assert not (tmp_path / "rep" / "table.md").exists()

    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines(1, 2, 2, 3))
    with pytest.raises(MetricsOrderError, match="line 3 repeats epoch 2 after epoch 2"):
        check_metrics_for_resume(path, checkpoint_epoch=3, total_epochs=4, every=1)
    path.write_text(_lines(1, 2, 3) + '{"epoch": 4, "cut')  # a torn last line is no repeat
    assert check_metrics_for_resume(path, 3, 4, 1).lost == []


def test_resume_refuses_a_directory_two_runs_wrote(tmp_path: Path, tiny_config_values: dict):
    config = _config_file(tmp_path, tiny_config_values, epochs=3)
    run_dir = tmp_path / "run"
    assert (
        runner.invoke(app, ["train", "-c", str(config), "--run-dir", str(run_dir)]).exit_code == 0
    )
    (run_dir / "summary.json").unlink()  # as if it stopped after its last checkpoint
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(_lines(1))
    before = (run_dir / "metrics.jsonl").read_bytes()
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert_one_line_error(result, "line 4 goes back to epoch 1 after epoch 3", "--overwrite")
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # nothing rewritten


# ----------------------------------------------------------------------------- full disk


def test_a_report_to_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_report import write_run

    runs = tmp_path / "runs"
    write_run(runs / "a", [0.5, 0.7])
    real_fsync, calls = os.fsync, []

    def fsync_then_full(fd: int) -> None:  # the first file goes through, then the disk is full
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_full)
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "cannot write the report", "no space left", "free some space")
    assert "none is half-written" in result.output and len(calls) == 2
    assert not list((tmp_path / "out").glob(".*.tmp"))


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-4", 1e-4), ("1E-4", 1e-4), ("5e3", 5000.0), (".5", 0.5), ("-1e-3", -1e-3),
     ("+2.5e+2", 250.0), ("1.0e-4", 1e-4), ("3", 3), ("1_000", 1000)],
)  # fmt: skip
def test_numbers_parse_as_users_type_them(text: str, value: float):
    parsed = parse_override(f"a.b={text}")["a"]["b"]
    assert parsed == value and type(parsed) is type(value)


def test_scientific_floats_in_set_and_in_yaml_files(tmp_path: Path):
    assert load_config(overrides=["train.lr=1e-4"]).train.lr == 0.0001
    assert load_config(overrides=["train.lr=5E-3"]).train.lr == 0.005
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 5e-2\n")
    cfg = load_config(str(path))
    assert cfg.train.lr == 0.0001 and cfg.train.weight_decay == 0.05
    assert parse_override("a=1e-4x")["a"] == "1e-4x" and parse_override("a=e5")["a"] == "e5"
    with pytest.raises(ConfigError, match="train.epochs: expected int, got 1000.0"):
        load_config(overrides=["train.epochs=1e3"])  # a float is not an int, as before


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", ".nan", "-.inf"])
def test_nan_and_inf_are_floats_that_must_be_finite(text: str):
    with pytest.raises(ConfigError, match=r"train.lr: expected a finite number"):
        load_config(overrides=[f"train.lr={text}"])


def test_empty_or_non_mapping_config_files_are_errors(tmp_path: Path):
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing yet\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match="the config is empty.*built-in defaults"):
            load_config(str(path))
    path = tmp_path / "scalar.yaml"
    path.write_text("fashion_mnist\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(str(path))


def test_a_yaml_syntax_error_is_one_line_naming_where(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1, 2\nseed: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message and "not valid YAML (line 3, column" in message
    result = runner.invoke(app, ["train", "-c", str(path), "--run-dir", str(tmp_path / "r")])
    assert_one_line_error(result, "not valid YAML")
    assert len([x for x in result.output.splitlines() if x.strip()]) == 1


# ----------------------------------------------------------------------------- messages


def test_offline_clip_weights_fail_in_seconds_in_one_whole_line(monkeypatch: pytest.MonkeyPatch):
    from bdsel.zeroshot import clip

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download although the host cannot be reached")

    monkeypatch.setattr("open_clip.pretrained.download_pretrained", no_download)
    monkeypatch.setattr(clip, "_cached_weights", lambda cfg: None)
    monkeypatch.setattr(clip, "_reachable", lambda host, timeout=2.0: False)
    with pytest.raises(ValueError) as info:
        clip._fetch_pretrained("RN50", "openai")
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message
    assert message.endswith("--set zeroshot.pretrained=/path/to/RN50-openai.pt")

    def long_failure(*args, **kwargs):
        raise OSError("An error happened while trying to locate the file on the Hub " + "x" * 200)

    monkeypatch.setattr(clip, "_reachable", lambda host, timeout=2.0: True)
    monkeypatch.setattr("open_clip.pretrained.download_pretrained", long_failure)
    with pytest.raises(ValueError, match=r"\(OSError: An error happened while trying .*x{200}\)"):
        clip._fetch_pretrained("RN50", "openai")  # the reason whole, not cut mid-word


def test_a_cache_for_other_data_names_the_differing_key_and_both_values(
    tiny_config_values: dict,
):
    cfg = load_config(values=tiny_config_values, overrides=["data.noise.rate=0.4"])
    spec = {"split_seed": 3, "train_fraction": 0.5, "noise": {"kind": "symmetric", "rate": 0.2},
            "imbalance_ratio": 1.0}  # fmt: skip
    text = split_differences(spec, cfg)
    assert text == (
        "data.noise: cache {'kind': 'symmetric', 'rate': 0.2}, "
        "this run {'kind': 'symmetric', 'rate': 0.4}"
    )
    same = split_differences(dict(spec, noise={"kind": "symmetric", "rate": 0.4}), cfg)
    assert "are the same" in same and "data.noise" in same
