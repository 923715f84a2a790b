"""TensorBoard (issue 30): a run's event files hold the scalars of metrics.jsonl at their
steps, and a killed, resumed run's curves have no duplicate steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bdsel_cli.main import app
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from bdsel.config import load_config
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
    off = dict(values, train={"epochs": 1, "tensorboard": False})
    train(load_config(values=off), tmp_path / "off")
    assert not (tmp_path / "off" / "tb").exists()


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
