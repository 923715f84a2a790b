"""experiments/peers.py: the grid as data, its commands, and the table's same-clock ratios."""

import json
from pathlib import Path

import peers
import peers_grid as peers_grid
import pytest


def _patch(monkeypatch, name, value):
    """A grid setting, in the grid module and wherever the script imported it."""
    for module in (peers, peers_grid):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)


def test_the_grid_names_each_run_once_and_its_stored_runs_exist():
    names = [r.name for r in peers_grid.RUNS]
    assert len(names) == len(set(names))
    stored = [r for r in peers_grid.RUNS if r.stored]
    assert stored and all(
        (peers_grid.STORED_DIR / r.stored / "summary.json").is_file() for r in stored
    )
    assert {r.rate for r in peers_grid.RUNS} == {0.0, 0.2, 0.4}
    assert [r.seed for r in peers_grid.RUNS if r.arm.key == "full" and r.rate == 0.2] == [0, 1, 2]


def test_a_cleaned_run_reads_the_crossfit_cache_of_its_own_noise_rate(tmp_path: Path):
    run = next(r for r in peers_grid.RUNS if r.arm.key == "clean_bayesian" and r.rate == 0.4)
    cmd = peers_grid.command(run, tmp_path)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    cache = str(peers_grid.crossfit_cache(0.4))
    assert f"data.clean.cache={cache}" in sets and f"zeroshot.cache={cache}" in sets
    assert "data.noise.rate=0.4" in sets and "seed=" + str(run.seed) in sets
    assert cmd[cmd.index("--run-dir") + 1] == str(tmp_path / run.name)
    assert peers_grid.crossfit_cache(0.4) != peers_grid.crossfit_cache(0.2)  # a cache per rate
    full = next(r for r in peers_grid.RUNS if r.arm.key == "full")
    assert not any("cache" in v for v in peers_grid.command(full, tmp_path))


def test_cache_seconds_come_from_the_commands_own_table_even_wrapped(tmp_path: Path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "cache_holdout.txt").write_text("│ time (fitting the predictor included) │ 256.5s │\n")
    (logs / "cache_crossfit_n20.txt").write_text(
        "│ time (fitting the predictor          │ 185.1s          │\n│ included)  │  │\n"
    )
    (logs / "cache_crossfit_n40.txt").write_text("killed before its summary\n")
    assert peers.cache_seconds(tmp_path) == {"holdout": 256.5, "crossfit_n20": 185.1}


def _run(path: Path, accs: list[float], seconds: list[float], samples_per_epoch: int) -> None:
    path.mkdir(parents=True)
    records = [
        {"epoch": e + 1, "test_acc": a, "wall_s": s, "samples_seen": (e + 1) * samples_per_epoch,
         "selected_noisy_frac": 0.1}
        for e, (a, s) in enumerate(zip(accs, seconds, strict=True))
    ]  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "summary.json").write_text("{}")


def test_rows_compare_each_run_with_uniform_of_the_same_seed_and_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    stored = tmp_path / "stored"
    _patch(monkeypatch, "STORED_DIR", stored)
    _patch(monkeypatch, "RUNS", [
        peers_grid.Run(peers_grid.ARM["uniform"], 0.4, 0),
        peers_grid.Run(peers_grid.ARM["infobatch"], 0.4, 0),
        peers_grid.Run(peers_grid.ARM["uniform_stored"], 0.4, 0),
        peers_grid.Run(peers_grid.ARM["bayesian_holdout_stored"], 0.4, 0),
    ])  # fmt: skip
    runs = tmp_path / "runs"
    _run(runs / "uniform-n40-s0", [0.70, 0.80, 0.85], [10, 20, 30], 100)
    _run(runs / "infobatch-n40-s0", [0.80, 0.86, 0.87], [40, 80, 120], 1000)
    _run(stored / "u100n40_s0", [0.70, 0.80, 0.84], [20, 40, 60], 100)  # a slower day's clock
    _run(stored / "b100n40_s0", [0.85, 0.88, 0.89], [30, 60, 90], 100)
    rows = {r.label: r for r in peers.rows(runs, 0.4, [0.8, 0.85], {}, {})}
    assert set(rows) == {"uniform", "infobatch (batch 128)", "uniform (stored)",
                         "bayesian (holdout) (stored)"}  # fmt: skip
    ib = rows["infobatch (batch 128)"]
    assert ib.diffs == [pytest.approx(0.02)] and ib.samples[0.8] == (1000, 1)
    b = rows["bayesian (holdout) (stored)"]
    assert b.diffs == [pytest.approx(0.05)]  # against the stored uniform, not the fresh one
    text = peers.table(list(rows.values()), [0.8, 0.85])
    line = next(x for x in text.splitlines() if x.startswith("| bayesian (holdout) (stored)"))
    assert "| 30 (0.75×) |" in line  # 30 s to 80% against the stored uniform's 40 s
    line = next(x for x in text.splitlines() if x.startswith("| infobatch"))
    assert "| 40 (2.00×) |" in line and "| 80 (2.67×) |" in line  # the fresh uniform's 20 s, 30 s
