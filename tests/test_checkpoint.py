"""A run resumed from its checkpoint, and the faults training meets: a resume that never
rewrites history wrongly, a full disk that says so, an interrupt, a loss that turns NaN."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from bdsel_cli.main import app
from conftest import assert_one_line_error, config_file, one_line, write_yaml
from typer.testing import CliRunner

from bdsel.configure import load_config
from bdsel.rundir import writer as runlog
from bdsel.rundir.writer import check_metrics_for_resume, evaluated_epochs
from bdsel.train import TrainingDiverged, train

runner = CliRunner()


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _Stop(KeyboardInterrupt):
    pass


def _stop_at(epoch: int):
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:  # after this epoch's record, before its checkpoint
            raise _Stop

    return on_epoch


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` (tb/ included) and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _full_disk_on(monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """The ``after``+1-th atomic write of run file ``name`` hits a full disk at fsync."""
    real = runlog.atomic_write_bytes
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        if Path(path).name == name:
            calls["n"] += 1
            if calls["n"] > after:
                with monkeypatch.context() as m:
                    m.setattr(os, "fsync", _raise_enospc)
                    return real(path, data)
        return real(path, data)

    monkeypatch.setattr(runlog, "atomic_write_bytes", write)


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _lines(*epochs: int) -> str:
    return "".join(json.dumps({"epoch": e, "test_acc": 0.5}) + "\n" for e in epochs)


def test_check_metrics_for_resume_names_what_is_damaged_and_lost(tmp_path: Path):
    assert evaluated_epochs(4, 5, 2) == [2, 4]
    assert evaluated_epochs(5, 5, 2) == [2, 4, 5]
    assert evaluated_epochs(5, 5, 3) == [3, 5]
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"epoch": 2, "test_acc": 0.5}\n{"epoch": 4, "te\n{"epoch": 3}\n{"epoch": 6, "x": 1}\n'
    )
    check = check_metrics_for_resume(path, checkpoint_epoch=4, total_epochs=6, every=2)
    assert [r["epoch"] for r in check.records] == [2]
    assert check.lost == [4] and check.damaged_lines == [2] and check.unexpected == [3]
    check.rebuild({"epoch": 4, "test_acc": 0.6})
    assert [r["epoch"] for r in check.records] == [2, 4] and check.lost == []
    message = check.report(path)
    assert "line(s) 2" in message and "rebuilt epoch(s) 4" in message
    assert "epoch(s) 3" in message

    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "cut')  # cut after checkpoint 2
    check = check_metrics_for_resume(path, checkpoint_epoch=2, total_epochs=4, every=1)
    assert check.lost == [] and [r["epoch"] for r in check.records] == [1, 2]

    path.write_text('{"epo\n{"epoch": 2}\n')  # a damaged line that no checkpoint can rebuild
    check = check_metrics_for_resume(path, checkpoint_epoch=2, total_epochs=4, every=1)
    assert check.lost == [1] and "epoch(s) 1 are lost for good" in check.report(path)


def test_resume_rebuilds_a_cut_record_from_the_checkpoint(tmp_path: Path, tiny_config_values: dict):
    cfg = load_config(values=dict(tiny_config_values, train={"epochs": 3}))
    train(cfg, tmp_path / "full")
    cut = tmp_path / "cut"
    with pytest.raises(_Stop):
        train(cfg, cut, on_epoch=_stop_at(3))
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["epoch"] == 2
    text = (cut / "metrics.jsonl").read_text()
    line2 = text.splitlines()[1]
    # a crash while appending epoch 2's record: the line cut in the middle, nothing after it
    (cut / "metrics.jsonl").write_text(text[: text.index(line2) + len(line2) // 2])

    result = runner.invoke(app, ["train", "--run-dir", str(cut), "--resume"])
    assert result.exit_code == 0, result.output
    assert "rebuilt epoch(s) 2 from the checkpoint" in one_line(result)
    records, full = _records(cut), _records(tmp_path / "full")
    assert [r["epoch"] for r in records] == [1, 2, 3]  # the old code lost epoch 2 for good
    assert records[1]["rebuilt"] and records[1]["train_loss"] is None
    for key in ("test_acc", "test_loss", "step", "samples_seen"):
        assert records[1][key] == full[1][key], key
    assert records[2]["test_acc"] == full[2]["test_acc"]
    assert all(len(line) <= 80 for line in result.output.splitlines() if line.startswith("epoch"))


def test_resume_never_rewrites_a_finished_run(tmp_path: Path, tiny_config_values: dict):
    run_dir = tmp_path / "run"
    cfg_path = write_yaml(tmp_path, tiny_config_values)
    assert (
        runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)]).exit_code == 0
    )
    metrics = run_dir / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-30])  # cut mid-line
    before = _files(run_dir)

    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert "finished all 2 epochs" in one_line(result) and "nothing to resume" in one_line(result)
    assert "line(s) 2 of" in one_line(
        result
    ) and "summary.json holds the final numbers" in one_line(result)
    assert _files(run_dir) == before
    # the library says the same and leaves the directory alone
    summary = train(load_config(values=tiny_config_values), run_dir, mode="resume")
    assert summary["epochs_run"] == 2
    assert _files(run_dir) == before


def test_full_disk_at_a_checkpoint_is_one_line_and_resumable(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    cfg_path = write_yaml(tmp_path, dict(tiny_config_values, train={"epochs": 3}))
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_disk_on(m, "checkpoint.pt", after=1)  # epoch 2's checkpoint
        result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert_one_line_error(
        result,
        f"no space left on the device writing {run_dir / 'checkpoint.pt'}",
        "the last checkpoint",
        "is intact",
        f"bdsel train --run-dir {run_dir} --resume",
    )
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2, 3]


def test_full_disk_at_metrics_and_summary(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    cfg_path = write_yaml(tmp_path, tiny_config_values)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_disk_on(m, "summary.json")
        result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert_one_line_error(result, f"writing {run_dir / 'summary.json'}", "--resume")
    assert not (run_dir / "summary.json").exists()
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0 and (run_dir / "summary.json").is_file(), result.output

    rundir = runlog.RunDir(run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _raise_enospc)
        with pytest.raises(runlog.DiskFullError, match="metrics.jsonl: the last checkpoint"):
            rundir.append_metrics({"epoch": 3, "test_acc": 0.5})
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # no partial line left


def test_interrupt_before_the_first_checkpoint_promises_nothing(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    import bdsel.step

    cfg_path = write_yaml(tmp_path, tiny_config_values)
    run_dir = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(bdsel.step.Stepper, "step", interrupted)
        result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert result.exit_code == 130
    assert "nothing to resume" in one_line(result) and "--overwrite" in one_line(result)
    assert "intact" not in one_line(result)

    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert_one_line_error(result, "has no checkpoint.pt yet", "start it again with --overwrite")
    result = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "nowhere"), "--resume"])
    assert_one_line_error(result, "does not exist", "without --resume")

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), __import__("signal").SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(bdsel.step.Stepper, "step", terminated)
        result = runner.invoke(
            app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir), "--overwrite"]
        )
    assert result.exit_code == 143 and "terminated" in one_line(result), result.output


def test_stale_temporary_checkpoints_are_removed(tmp_path: Path, tiny_config_values: dict):
    cfg = load_config(values=dict(tiny_config_values, train={"epochs": 2}))
    run_dir = tmp_path / "run"
    with pytest.raises(_Stop):
        train(cfg, run_dir, on_epoch=_stop_at(2))
    stale = run_dir / ".checkpoint.pt.x1y2z3.tmp"  # a kill between write and rename
    stale.write_bytes(b"\0" * 1000)
    (run_dir / ".summary.json.abc.tmp").write_text("{")
    train(cfg, run_dir, mode="resume")
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2

    rundir = runlog.RunDir(run_dir)
    stale.write_bytes(b"\0")
    rundir.save_checkpoint({"epoch": 2})
    assert not stale.exists()


def test_a_loss_that_turns_nan_stops_the_run_naming_epoch_and_step(
    tmp_path: Path, tiny_config_values: dict
):
    # Epoch 1 at lr 1e-3, then the step schedule multiplies it by 1e30: the loss overflows.
    values = dict(tiny_config_values)
    values["train"] = {"epochs": 3, "schedule": "step", "step_milestones": [1],
                       "step_gamma": 1e30}  # fmt: skip
    cfg_path = write_yaml(tmp_path, values)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert_one_line_error(result, "NaN or Inf at epoch 2, step 1", "checkpoint of epoch 1 is kept")
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert [r["epoch"] for r in _records(run_dir)] == [1]
    assert not (run_dir / "summary.json").exists()
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1\d"):
        train(load_config(values=values), tmp_path / "lib")


def test_resume_refuses_a_directory_two_runs_wrote(tmp_path: Path, tiny_config_values: dict):
    config = config_file(tmp_path, tiny_config_values, epochs=3)
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
