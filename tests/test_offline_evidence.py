"""experiments/offline_evidence.py: the run commands and the comparisons it writes."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import offline_evidence_grid as evidence_grid
import pytest

_spec = importlib.util.spec_from_file_location(
    "offline_evidence", Path(__file__).parents[1] / "experiments" / "offline_evidence.py"
)
evidence = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = evidence  # dataclasses look their module up there
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
    cmd = evidence_grid.command("b160_s1", tmp_path)
    assert cmd[1:6] == [
        "train",
        "--config",
        "fashion_mnist",
        "--run-dir",
        str(tmp_path / "b160_s1"),
    ]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "select.n_candidates=160" in sets and "seed=1" in sets
    assert "select.method=bayesian" in sets


def test_long_table_compares_each_method_with_uniform_and_rho_loss(tmp_path: Path):
    for seed, (u_final, b_final) in enumerate([(0.855, 0.88), (0.87, 0.88)]):
        _run(tmp_path, f"u100_s{seed}", {4: 0.80, 8: 0.82, 12: u_final}, 1.0)
        _run(tmp_path, f"b100_s{seed}", {4: 0.82 + seed / 100, 8: 0.85, 12: b_final}, 4.0)
    _run(tmp_path, "r100_s0", {4: 0.80, 8: 0.86, 12: 0.87}, 2.0)
    args = argparse.Namespace(runs=tmp_path)
    assert evidence.study_targets(args, "hundred") == (0.81, 0.86)  # uniform's mean 86.25%
    text = evidence.long_table(args, "hundred", (0.81, 0.86))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines()[2:]}
    u, b, r = rows["uniform"], rows["bayesian (holdout)"], rows["rho_loss (holdout)"]
    # 81%: uniform at epoch 8 (8 s), bayesian at 4 (16 s), rho_loss at 8
    assert u[2:7] == ["8.0", "1.00", "1.00", "8", "1.00"]
    assert b[2:7] == ["4.0", "0.50", "0.50", "16", "2.00"]
    # 86%: uniform at 12 (seed 0 misses it: 1/2), bayesian 12 and 12 at 48 s
    assert u[7] == "12.0 (1/2)" and b[7:12] == ["12.0", "1.00", "1.50", "48", "4.00"]
    assert r[1] == "0" and r[7:10] == ["8.0", "0.67", "1.00"]
    assert b[12] == "88.00%" and b[13] == "+1.75 ± 1.06 pts"  # +2.5 and +1 against uniform
    assert u[13] == "-" and r[13] == "+1.50 pts" and b[14] == "- |"  # one seed: no ±; no noise


def test_crossfit_runs_get_one_cache_per_noise_setting():
    names = ["bcf100n0_s0", "bcf100n0_s1", "bcf100n40_s0", "b100n40_s0", "u100_s0"]
    caches = dict(evidence_grid.cache_commands(names))
    assert list(caches) == ["cache_holdout", "cache_crossfit_none_0.0", "cache_crossfit_0.4"]
    assert caches["cache_crossfit_0.4"][-4:] == [
        "--set", "data.noise.rate=0.4", "--set", "zeroshot.predictor=crossfit",
    ]  # fmt: skip
    assert list(dict(evidence_grid.cache_commands(["u100_s0", "b100_s1"]))) == ["cache_holdout"]
    assert evidence_grid.command("bcf100n40_s2", Path("r"))[-1].endswith(
        str(evidence_grid.crossfit_cache(["data.noise.rate=0.4"]))
    )


def test_noise_rates_compare_each_rate_with_its_own_uniform(tmp_path: Path):
    # 20% (the long table's names) and 40%; 0% has no run, so it has no row
    _run(tmp_path, "u100_s0", {4: 0.80, 8: 0.87}, 1.0)
    _run(tmp_path, "b100_s0", {4: 0.87, 8: 0.89}, 3.0)
    _run(tmp_path, "r100_s0", {4: 0.86, 8: 0.88}, 3.0)  # after bayesian in RUNS, before here
    _run(tmp_path, "tl100_s0", {4: 0.50, 8: 0.40}, 3.0)  # not a noise-study method
    for seed, u_final in enumerate([0.825, 0.845]):
        _run(tmp_path, f"u100n40_s{seed}", {4: 0.70, 8: 0.78, 12: u_final}, 1.0)
        _run(tmp_path, f"bcf100n40_s{seed}", {4: 0.79 + seed / 100, 8: 0.80, 12: 0.81}, 2.0)
    text, by_method = evidence.noise_rates(argparse.Namespace(runs=tmp_path))
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("| 20%", "82% / 87%", "uniform"),
        ("| 20%", "82% / 87%", "rho_loss (holdout)"),
        ("| 20%", "82% / 87%", "bayesian (holdout)"),
        ("| 40%", "78% / 83%", "uniform"),  # uniform's mean 83.5% at 40%
        ("| 40%", "78% / 83%", "bayesian (crossfit, plain T)"),
    ]
    assert rows[2][4:7] == ["89.00%", "+2.00 pts", "4.0 (0.50)"]  # 87% at epoch 4 of 8
    assert rows[2][7] == "12 (1.50)"  # 12 s against uniform's 8 s
    # 83% at 40%: uniform's seed 1 alone (epoch 12), crossfit never
    assert rows[3][6] == "12.0 (1.00, 1/2)" and rows[4][6] == "never"
    assert rows[4][5] == "-2.50 ± 1.41 pts"  # -1.5 and -3.5
    assert list(by_method) == [
        "uniform", "rho_loss (holdout)", "bayesian (holdout)", "bayesian (crossfit, plain T)",
    ]  # fmt: skip
    flat = evidence.uniform_flatness(argparse.Namespace(runs=tmp_path), "noise40")
    assert "seed 0: +12.50 pts (epoch 4 to 12), seed 1: +14.50 pts" in flat
    assert sorted(by_method["uniform"]) == [0.2, 0.4]
    evidence.noise_rates_plot(by_method, tmp_path / "rates.png")
    assert (tmp_path / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_runs_the_named_runs_that_have_not_finished(tmp_path: Path, monkeypatch):
    _run(tmp_path, "bcfT033_s0", {4: 0.8}, 1.0)  # finished: never rerun
    pools = []
    monkeypatch.setattr(
        evidence, "run_pool", lambda jobs, runs, n_jobs: pools.append([n for n, _ in jobs])
    )
    evidence.run_missing(argparse.Namespace(runs=tmp_path, only="bcfT033_*,u100n0_s2", jobs=2))
    caches, runs = pools
    assert runs == ["bcfT033_s1", "u100n0_s2"]  # in the order named
    assert evidence_grid.selected("bcfT033_s1,u100n0_s*,u100n0_s1") == [
        "bcfT033_s1", "u100n0_s0", "u100n0_s1", "u100n0_s2",
    ]  # in the order named, each once  # fmt: skip
    assert caches == ["cache_holdout", "cache_crossfit_default"]  # the config's 20%
    sets = evidence_grid.command("bcfT033_s1", tmp_path)
    assert "zeroshot.temperature=0.33" in sets and "zeroshot.predictor=crossfit" in sets
    assert evidence.label(evidence.RUNS["bcfT033_s1"].overrides) == "bayesian (crossfit, T=0.33)"
    assert evidence.label(evidence.RUNS["bcf100_s1"].overrides) == "bayesian (crossfit, plain T)"
    assert evidence.label(evidence.RUNS["bcfN_s1"].overrides) == "bayesian (crossfit, denoised T)"
    assert "zeroshot.temperature=plain" not in evidence_grid.command("bcfNn40_s0", tmp_path)
    with pytest.raises(SystemExit, match="no run is named bcf_T"):
        evidence_grid.selected("u100_s0,bcf_T*")
