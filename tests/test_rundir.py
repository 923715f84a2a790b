"""The run-directory format (bdsel.rundir): torch-free, one metric key per split, one rule for
epochs to target, and the validation split through the real CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bdsel_cli.main import app
from conftest import assert_one_line_error
from typer.testing import CliRunner

from bdsel import rundir, targets
from bdsel.rundir import MetricsOrderError, read_metrics
from bdsel.rundir.writer import RunDir, check_metrics_for_resume

ROOT = Path(__file__).parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_rundir_is_torch_free():
    assert not any(
        m.split(".")[0] == "torch" for m in _imported_modules(ROOT / "bdsel/rundir/__init__.py")
    )
    # Importing it (and the bdsel package above it) in a fresh interpreter loads no torch.
    code = "import sys, bdsel.rundir; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_rundir_spells_the_run_files():
    """Every other module names run files through bdsel.rundir (prose may mention them)."""
    spelled = []
    for path in sorted(
        [
            *ROOT.glob("bdsel/**/*.py"),
            *ROOT.glob("cli/*.py"),
            *ROOT.glob("benchmarks/*.py"),
            *ROOT.glob("experiments/*.py"),
        ]
    ):
        if path == ROOT / "bdsel/rundir/__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and text.lstrip("/") in rundir.RUN_FILES:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert len(list(ROOT.glob("bdsel/**/*.py"))) > 20  # the walk sees the package
    assert spelled == []


def test_metric_keys_of_the_splits():
    assert rundir.acc_key("test") == "test_acc" and rundir.acc_key("validation") == "val_acc"
    with pytest.raises(ValueError, match="unknown evaluation split 'train'"):
        rundir.acc_key("train")


def test_epochs_to_target_one_rule():
    acc32 = float(np.float32(0.7))  # 0.699999988...: an accuracy computed in float32
    records = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": acc32}]
    assert targets.epochs_to_target(records, 0.7, "val_acc") == 2  # rounding counts as reached
    assert targets.epochs_to_target(records, 0.7001, "val_acc") is None
    assert targets.epochs_to_target(records, 0.5, "val_acc") == 1


def test_targets_are_uniforms_final_rounded_down_and_five_points_under():
    assert targets.uniform_targets([0.8741, 0.8770, 0.8748]) == [0.82, 0.87]
    assert targets.uniform_targets([0.87, 0.87]) == [0.82, 0.87]  # 86.999...: a whole percent
    assert targets.uniform_targets([0.8699]) == [0.81, 0.86]
    with pytest.raises(ValueError, match="no final accuracies"):
        targets.uniform_targets([])


def test_jsonl_skips_a_torn_last_line_and_refuses_a_bad_middle_one(tmp_path: Path):
    rundir.append_metrics(tmp_path, {"epoch": 1})
    rundir.append_metrics(tmp_path, {"epoch": 2})
    with open(tmp_path / rundir.METRICS, "a") as f:
        f.write('{"epoch": 3, "te')
    records, torn = rundir.read_jsonl(tmp_path / rundir.METRICS)
    assert [r["epoch"] for r in records] == [1, 2] and torn.startswith("line 3 is incomplete")
    assert rundir.read_metrics(tmp_path) == records
    RunDir(tmp_path).write_metrics([{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    lines = (tmp_path / rundir.METRICS).read_text().splitlines()
    (tmp_path / rundir.METRICS).write_text("\n".join([lines[0], "[1]", lines[2]]) + "\n")
    with pytest.raises(rundir.RunDirError, match="line 2 is not a JSON object"):
        rundir.read_metrics(tmp_path)


def test_summary_and_config_round_trip_atomically(tmp_path: Path):
    assert rundir.read_summary(tmp_path) is None and not rundir.has_summary(tmp_path)
    RunDir(tmp_path).write_summary({"status": "complete"})
    assert rundir.read_summary(tmp_path) == {"status": "complete"}
    assert (tmp_path / rundir.SUMMARY).stat().st_mode & 0o777 == 0o644
    rundir.atomic_write_text(tmp_path / rundir.CONFIG, "seed: 3\n")
    assert rundir.read_config(tmp_path) == {"seed": 3}
    assert not rundir.is_run_dir(tmp_path)  # no metrics yet
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    (tmp_path / rundir.CONFIG).write_text("- a list\n")
    with pytest.raises(rundir.RunDirError, match="expected a mapping"):
        rundir.read_config(tmp_path)


def test_cli_trains_on_the_validation_split(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    """``--set data.validation_fraction=0.05`` through the real CLI: records and summary say val_acc;
    the command leaves the (torchrun) process group at the end."""
    import bdsel.distributed

    left = []
    monkeypatch.setattr(bdsel.distributed, "shutdown", lambda: left.append(True))
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dict(tiny_config_values, train={"epochs": 2})))
    run_dir = tmp_path / "run"
    args = ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)]
    args += ["--set", "data.validation_fraction=0.05"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "epoch 2 val acc" in out and "final val acc" in out and "test acc" not in out
    records = rundir.read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all("test_acc" not in r and 0.0 <= r["val_acc"] <= 1.0 for r in records)
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    assert summary["final_val_acc"] == records[-1]["val_acc"]
    assert "final_test_acc" not in summary
    assert left == [True]


runner = CliRunner()


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
