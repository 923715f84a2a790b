"""TensorBoard (issue 30): a run's event files hold the scalars of metrics.jsonl at their
steps, and a killed, resumed run's curves have no duplicate steps."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import yaml
from bdsel_cli.main import app
from conftest import assert_one_line_error
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from bdsel.configure import load_config
from bdsel.train import train

runner = CliRunner()


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_event_files_hold_the_metrics_at_their_steps(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values, train={"epochs": 3})
    values["select"] = dict(values["select"], method="grad_norm")
    train(load_config(values=values), tmp_path / "run")
    recs = records(tmp_path / "run")
    for tag in ("test_acc", "train_loss", "selected_noisy_frac", "wall_s", "epoch",
                "select/grad_norm_selected"):  # fmt: skip
        got = scalars(tmp_path / "run", tag)
        assert [s for s, _ in got] == [r["step"] for r in recs], tag
        assert [v for _, v in got] == pytest.approx([r[tag] for r in recs], rel=1e-6), tag


def test_a_resumed_run_continues_the_curves_without_duplicates(
    tmp_path: Path, tiny_config_values: dict
):
    class Stop(KeyboardInterrupt):
        pass

    cfg = load_config(values=dict(tiny_config_values, train={"epochs": 4}))

    def stop(record: dict) -> None:
        if record["epoch"] == 3:  # after epoch 3's record (in tb/ too), before its checkpoint
            raise Stop

    run_dir = tmp_path / "run"
    with pytest.raises(Stop):
        train(cfg, run_dir, on_epoch=stop)
    before = scalars(run_dir, "test_acc")
    assert len(before) == 3  # epoch 3's event was written, then the run was killed
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    recs = records(run_dir)
    got = scalars(run_dir, "test_acc")
    steps = [s for s, _ in got]
    assert steps == [r["step"] for r in recs] and len(set(steps)) == 4
    assert [v for _, v in got] == pytest.approx([r["test_acc"] for r in recs], rel=1e-6)
    again = runner.invoke(app, ["train", "-c", str(run_dir / "config.yaml"), "--run-dir",
                                str(run_dir), "--overwrite", "--set", "train.epochs=1"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert [s for s, _ in scalars(run_dir, "test_acc")] == [records(run_dir)[0]["step"]]


# -- failures: every one is the run directory's one-line error (exit 2), nothing lost


def _train(run_dir: Path, cfg_path: Path, *more: str):
    return runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir), *more])


def _config(tmp_path: Path, values: dict, epochs: int) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(values, train={"epochs": epochs})))
    return path


def test_a_tb_that_cannot_be_made_stops_before_anything_is_written(
    tmp_path: Path, tiny_config_values: dict, read_only
):
    cfg_path = _config(tmp_path, tiny_config_values, 1)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tb").write_text("not a folder")
    locked = tmp_path / "locked"
    read_only(locked / "tb")
    for run_dir in (plain, locked):
        result = _train(run_dir, cfg_path)
        assert_one_line_error(
            result,
            f"cannot write TensorBoard events in {run_dir / 'tb'}",
            "make it a writable directory",
        )
        assert not (run_dir / "config.yaml").exists()  # a rerun needs no --overwrite
    assert (plain / "tb").read_text() == "not a folder"
    (plain / "tb").unlink()  # made a directory, the rerun trains
    again = _train(plain, cfg_path)
    assert again.exit_code == 0, again.output
    assert (plain / "summary.json").is_file() and (plain / "tb").is_dir()


def _failing_pwrite(run_dir: Path, nth: int, error: int):
    """os.pwrite that fails the ``nth`` write into ``run_dir``/tb with ``error``, leaving a
    torn event behind (the log cuts it back)."""
    real, calls = os.pwrite, {"n": 0}

    def pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run_dir / "tb")):
            calls["n"] += 1
            if calls["n"] == nth:
                real(fd, bytes(data[:7]), offset)
                raise OSError(error, os.strerror(error))
        return real(fd, data, offset)

    return pwrite


def test_a_tb_that_fails_mid_run_is_one_line_and_the_resume_is_identical(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    """A run's third event write (its header, then one per evaluation) hits a read-only file
    system; the resumed run's third a full disk: each stops with one line and the resume
    hint; the last resume's metrics equal an uninterrupted run's, and the curves hold every
    step once."""
    cfg_path = _config(tmp_path, tiny_config_values, 3)
    whole = tmp_path / "whole"
    assert _train(whole, cfg_path).exit_code == 0
    run_dir = tmp_path / "run"
    hint = f"bdsel train --run-dir {run_dir} --resume"
    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", _failing_pwrite(run_dir, 3, errno.EROFS))
        result = _train(run_dir, cfg_path)
    assert_one_line_error(result, "cannot write TensorBoard events", "Read-only", hint)
    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", _failing_pwrite(run_dir, 3, errno.ENOSPC))
        result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert_one_line_error(result, "no space left on the device writing TensorBoard", hint)
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    timing = ("wall_s", "selection_s")  # the clock: the only keys a resume may change
    got = [{k: v for k, v in r.items() if k not in timing} for r in records(run_dir)]
    want = [{k: v for k, v in r.items() if k not in timing} for r in records(whole)]
    assert got == want
    assert [s for s, _ in scalars(run_dir, "test_acc")] == [r["step"] for r in want]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real tmpfs of ``kib`` KiB mounted at ``path`` (root with mount rights only), unmounted
    at the end."""
    import subprocess

    mounted: list[Path] = []

    def mount(path: Path, kib: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                              capture_output=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_tmpfs_under_tb_at_the_start_and_mid_run(
    tmp_path: Path, tiny_config_values: dict, small_tmpfs
):
    cfg_path = _config(tmp_path, tiny_config_values, 24)
    run_dir = tmp_path / "run"
    tb = small_tmpfs(run_dir / "tb", 8)
    filler = tb / "filler"
    filler.write_bytes(b"x" * 8192)  # full
    result = _train(run_dir, cfg_path)
    assert_one_line_error(result, f"writing TensorBoard events in {tb}",
                          "no checkpoint was written yet", "--overwrite")  # fmt: skip
    run_dir = tmp_path / "run2"  # (--overwrite would empty tb/, filler and all)
    tb = small_tmpfs(run_dir / "tb", 8)
    filler = tb / "filler"
    filler.write_bytes(b"x" * 4096)  # one page left: room for some of the 24 evaluations
    result = _train(run_dir, cfg_path)
    assert_one_line_error(result, f"writing TensorBoard events in {tb}", "--resume")
    stopped_at = len(records(run_dir))
    assert 1 < stopped_at < 24  # mid-run
    filler.unlink()
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    steps = [s for s, _ in scalars(run_dir, "test_acc")]
    assert steps == [r["step"] for r in records(run_dir)] and len(steps) == 24
