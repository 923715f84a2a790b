"""benchmarks/offline_evidence.py: the run commands and the comparisons it writes."""

import argparse
import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "offline_evidence", Path(__file__).parents[1] / "benchmarks" / "offline_evidence.py"
)
evidence = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evidence)


def _run(runs: Path, name: str, accs: dict[int, float], seconds_per_epoch: float) -> None:
    d = runs / name
    d.mkdir(parents=True)
    records = [
        {"epoch": e, "test_acc": a, "wall_s": e * seconds_per_epoch} for e, a in accs.items()
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "summary.json").write_text("{}")


def test_hundred_comparison_finds_the_worst_epoch_after_the_fifth(tmp_path: Path):
    u = {4: 0.70, 8: 0.80, 12: 0.84, 16: 0.86, 20: 0.87}
    b = {4: 0.60, 8: 0.83, 12: 0.835, 16: 0.87, 20: 0.88}  # below at 4 (ignored) and at 12
    _run(tmp_path, "u100_s0", u, 1.0)
    _run(tmp_path, "b100_s0", b, 3.0)
    text = evidence.hundred_comparison(argparse.Namespace(runs=tmp_path))
    row = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    assert "| -0.50 pts | 12 |" in row  # the worst epoch after 5, not epoch 4's -10
    assert row.endswith("| 87.00% | 88.00% | +1.00 pts |")
    assert "seed 0: +7.00 pts (epoch 8 to 20)" in text  # last evaluation >= 10 epochs back


def test_speedup_is_relative_to_uniform_of_the_same_seed(tmp_path: Path):
    _run(tmp_path, "u30_s1", {1: 0.7, 2: 0.75, 3: 0.8, 4: 0.85}, 2.0)
    _run(tmp_path, "b30_s1", {1: 0.8, 2: 0.86}, 5.0)
    text = evidence.speedup_lines(argparse.Namespace(runs=tmp_path), ["b30_s1"])
    row = text.splitlines()[-1]
    # 80%: epoch 1 of uniform's 3 (0.33x), 5 s of 6 s; 85%: epoch 2 of 4, 10 s of 8 s
    assert row == "| b30_s1 | 1 | 1 (0.33×) | 5 (0.83×) | 2 (0.50×) | 10 (1.25×) | 86.0% |"


def test_every_run_is_a_plain_bdsel_train_with_its_overrides(tmp_path: Path):
    cmd = evidence.command("b160_s1", tmp_path)
    assert cmd[1:6] == [
        "train",
        "--config",
        "fashion_mnist",
        "--run-dir",
        str(tmp_path / "b160_s1"),
    ]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "select.n_candidates=160" in sets and "seed=1" in sets
    assert "select.method=bayesian" in sets and "select.prefilter=1.0" in sets
