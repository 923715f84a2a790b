"""The evidence sweep's own arithmetic: targets from uniform, time to target, cost table."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "fashion_sweep", Path(__file__).parents[1] / "experiments" / "fashion_sweep.py"
)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def _run(root: Path, method: str, seed: int, accs: list[float], step_s: float, sel_share: float):
    d = root / "noise20" / method / f"seed{seed}"
    d.mkdir(parents=True)
    lines = []
    for i, acc in enumerate(accs, start=1):
        wall = i * 10 * step_s  # 10 steps per epoch
        lines.append(
            json.dumps(
                {
                    "epoch": i,
                    "step": 10 * i,
                    "test_acc": acc,
                    "wall_s": wall,
                    "selection_s": sel_share * wall,
                }
            )
        )
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text("{}")
    return d


def test_targets_time_to_target_and_cost(tmp_path: Path):
    u0 = _run(tmp_path, "uniform", 0, [0.5, 0.7, 0.80], 1.0, 0.0)
    u1 = _run(tmp_path, "uniform", 1, [0.5, 0.75, 0.83], 1.0, 0.0)
    _run(tmp_path, "bayesian", 0, [0.6, 0.81, 0.82], 4.0, 0.75)
    _run(tmp_path, "bayesian", 1, [0.6, 0.70, 0.72], 4.0, 0.75)
    # mean final 0.815 -> 81% and 76%
    assert sweep.choose_targets([u0, u1]) == [0.76, 0.81]
    metrics = sweep.read_metrics(u1)
    assert sweep.seconds_to_target(metrics, 0.75) == pytest.approx(20.0)
    assert sweep.seconds_to_target(metrics, 0.9) is None
    args = argparse.Namespace(runs=tmp_path, methods=["uniform", "bayesian"])
    table = sweep.cost_table(args, 0.2, [0.76, 0.81]).splitlines()
    uniform = [c.strip() for c in table[2].split("|")[1:-1]]
    bayes = [c.strip() for c in table[3].split("|")[1:-1]]
    # uniform: 76% at epoch 3 by both seeds (30 s), 81% by seed 1 only
    assert uniform == ["uniform", "2", "1000.0", "1.00x", "0%", "30 s", "30 s (1/2)"]
    # bayesian: 4x the step; 76% and 81% at epoch 2 by seed 0 only (80 s)
    assert bayes == ["bayesian", "2", "4000.0", "4.00x", "75%", "80 s (1/2)", "80 s (1/2)"]


def test_tuning_keeps_the_current_value_within_the_margin():
    scores = {0.1: 0.871, 0.2: 0.870, 0.4: 0.865}
    assert sweep.choose(scores, 0.2, margin=0.002) == 0.2  # +0.1 point: not evidence
    assert sweep.choose(scores, 0.2, margin=0.0005) == 0.1
    assert sweep.choose(scores, 0.4, margin=0.002) == 0.1  # +0.6 points
