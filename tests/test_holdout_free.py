"""experiments/holdout_free.py: the grid as data, the caches its runs read, the table."""

import argparse
import json
from pathlib import Path

import holdout_free as hf
import holdout_free_grid as hf_grid
import pytest


def _patch(monkeypatch, name, value):
    """A grid setting, in the grid module and wherever the script imported it."""
    for module in (hf, hf_grid):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)


def test_the_grid_names_each_run_once_and_covers_the_issue_settings():
    names = [r.name for r in hf_grid.RUNS]
    assert len(names) == len(set(names))
    seeds = {(r.arm.key, r.setting): set() for r in hf_grid.RUNS}
    for r in hf_grid.RUNS:
        seeds[r.arm.key, r.setting].add(r.seed)
    shipped = "bayesian_crossfit_auto"
    for setting in ("n40", "p30"):  # the issue's 2 seeds, beside what they are compared with
        for arm in ("uniform", "bayesian_holdout", shipped, "bayesian_crossfit_fwd",
                    "bayesian_crossfit"):  # fmt: skip
            assert seeds[arm, setting] >= {0, 1}
    for arm in ("uniform", "bayesian_holdout", shipped, "bayesian_crossfit_fwd"):
        assert seeds[arm, "n20"] == {0, 1, 2}
    # a third seed at 40% only where the hold-out and uniform runs of that seed are in the grid
    assert seeds[shipped, "n40"] <= seeds["bayesian_holdout", "n40"] & seeds["uniform", "n40"]


def test_runs_made_for_other_studies_are_read_from_there(tmp_path: Path, monkeypatch):
    _patch(monkeypatch, "KEPT", tmp_path / "kept")
    uniform = hf_grid.Run(hf_grid.ARM["uniform"], "n20", 0)
    assert uniform.stored == hf_grid.RESULTS / "peers/runs/uniform-n20-s0"
    assert hf_grid.run_dir(uniform, tmp_path) == uniform.stored
    fresh = hf_grid.Run(hf_grid.ARM["uniform"], "p30", 0)  # no other study ran pairflip
    assert fresh.stored is None and hf_grid.run_dir(fresh, tmp_path) == tmp_path / fresh.name
    missing = hf_grid.Run(hf_grid.ARM["bayesian_holdout"], "n20", 2)  # the peers ran seeds 0 and 1
    assert missing.stored is None
    one = hf_grid.Run(hf_grid.ARM["bayesian_crossfit"], "n40", 1)  # one round: the offline study's
    assert one.stored == hf_grid.RESULTS / "offline/runs/bcfNn40_s1"
    # A run of this study made in an earlier session: its kept record, unless made again here.
    kept = hf_grid.Run(hf_grid.ARM["bayesian_holdout"], "p30", 0)
    _run(tmp_path / "kept" / kept.name, [0.8], 0.1)
    assert hf_grid.run_dir(kept, tmp_path) == tmp_path / "kept" / kept.name
    _run(tmp_path / kept.name, [0.8], 0.1)
    assert hf_grid.run_dir(kept, tmp_path) == tmp_path / kept.name
    assert hf_grid.Run(hf_grid.ARM["bayesian_crossfit_r2"], "n40", 1).stored is None


def test_commands_read_the_cache_of_their_own_setting_and_predictor(tmp_path: Path):
    run = hf_grid.Run(hf_grid.ARM["clean_bayesian"], "p30", 1)
    cmd = hf_grid.command(run, tmp_path)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    one = str(
        hf_grid.cache_path("p30", hf_grid.ONE_ROUND)
    )  # the cache the stored cleaning runs used
    assert f"zeroshot.cache={one}" in sets and f"data.clean.cache={one}" in sets
    assert "data.noise.kind=pairflip" in sets and "seed=1" in sets
    assert hf_grid.cache_path("p30", hf_grid.ONE_ROUND) != hf_grid.cache_path(
        "p30", hf_grid.CROSSFIT
    )
    assert hf_grid.cache_path("n20", hf_grid.CROSSFIT) != hf_grid.cache_path(
        "p30", hf_grid.CROSSFIT
    )
    # the hold-out model learns clean labels: one cache for every setting
    assert hf_grid.cache_path("n20", ()) == hf_grid.cache_path("p30", ())
    rho = hf_grid.command(hf_grid.Run(hf_grid.ARM["rho_loss_crossfit_auto"], "n40", 1), tmp_path)
    assert f"zeroshot.cache={hf_grid.cache_path('n40', hf_grid.CROSSFIT)}" in rho
    assert "select.method=rho_loss" in rho and "data.noise.rate=0.4" in rho
    assert hf_grid.Run(hf_grid.ARM["rho_loss_holdout"], "n40", 1).stored == (
        hf_grid.RESULTS / "offline/runs/r100n40_s1"
    )
    uniform = hf_grid.command(hf_grid.Run(hf_grid.ARM["uniform"], "p30", 0), tmp_path)
    assert not any(a.startswith(("zeroshot.cache", "data.clean")) for a in uniform)
    assert "select.method=uniform" in uniform


def test_cleaned_arms_clean_by_their_own_cache_and_it_is_made_first(tmp_path: Path, monkeypatch):
    auto, one = (
        str(hf_grid.cache_path("n40", hf_grid.CROSSFIT)),
        str(hf_grid.cache_path("n40", hf_grid.ONE_ROUND)),
    )
    uniform = hf_grid.command(hf_grid.Run(hf_grid.ARM["clean_uniform_auto"], "n40", 1), tmp_path)
    assert f"data.clean.cache={auto}" in uniform and not any("zeroshot.cache" in a for a in uniform)
    bayes = hf_grid.command(hf_grid.Run(hf_grid.ARM["clean_bayesian_auto"], "n40", 0), tmp_path)
    assert f"data.clean.cache={auto}" in bayes and f"zeroshot.cache={auto}" in bayes
    assert f"data.clean.cache={one}" in hf_grid.command(
        hf_grid.Run(hf_grid.ARM["clean_uniform"], "n40", 0), tmp_path
    )
    _patch(monkeypatch, "cache_path", lambda setting, predictor: tmp_path / "absent.h5")
    todo = [
        hf_grid.Run(hf_grid.ARM["clean_uniform_auto"], "n40", 0),
        hf_grid.Run(hf_grid.ARM["clean_uniform"], "p30", 0),
    ]
    names = [name for name, _ in hf_grid.cache_jobs(todo)]
    assert names == ["cache_crossfit_auto_n40", "cache_crossfit_p30"]


def test_a_retired_recipes_runs_are_reported_and_never_made(tmp_path: Path, monkeypatch):
    retired = hf_grid.Run(hf_grid.ARM["clean_bayesian_recache"], "p30", 0)
    assert retired.arm.retired and hf_grid.cache_path("p30", hf_grid.CLEANED) is None
    with pytest.raises(SystemExit, match="left bdsel"):
        hf_grid.command(retired, tmp_path)
    assert not hf_grid.ARM["bayesian_crossfit_auto"].retired
    # every retired run the grid names is a kept record
    assert all(hf_grid.has_summary(hf_grid.KEPT / r.name) for r in hf_grid.RUNS if r.arm.retired)
    _patch(monkeypatch, "KEPT", tmp_path / "kept")  # as if its record were missing
    pools: list[list[str]] = []
    monkeypatch.setattr(hf, "run_pool", lambda jobs, runs, n: pools.append([j[0] for j in jobs]))
    hf.run_missing(argparse.Namespace(only=retired.name, skip="", runs=tmp_path, jobs=2))
    assert pools == [[], [], []]


def _run(path: Path, accs: list[float], noisy: float) -> None:
    path.mkdir(parents=True)
    records = [
        {"epoch": e + 1, "test_acc": a, "wall_s": 10.0 * (e + 1), "samples_seen": 100 * (e + 1),
         "selected_noisy_frac": noisy, "base_noisy_frac": 0.3}
        for e, a in enumerate(accs)
    ]  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "summary.json").write_text("{}")


def test_the_table_compares_with_uniform_and_holdout_of_the_same_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runs = [hf_grid.Run(hf_grid.ARM[a], "p30", s) for a in ("uniform", "bayesian_holdout",
            "bayesian_crossfit") for s in (0, 1)]  # fmt: skip
    _patch(monkeypatch, "RUNS", runs)
    _patch(monkeypatch, "KEPT", tmp_path / "kept")  # no record of an earlier session
    _run(tmp_path / "uniform-p30-s0", [0.70, 0.80], 0.3)
    _run(tmp_path / "uniform-p30-s1", [0.72, 0.82], 0.3)
    _run(tmp_path / "bayesian_holdout-p30-s0", [0.80, 0.86], 0.05)
    _run(tmp_path / "bayesian_holdout-p30-s1", [0.82, 0.88], 0.05)
    _run(tmp_path / "bayesian_crossfit-p30-s0", [0.81, 0.85], 0.1)  # seed 1 not finished
    res = hf.results("p30", tmp_path)
    assert list(res) == ["uniform", "bayesian_holdout", "bayesian_crossfit"]
    text = hf.table(res, [0.8])
    line = next(x for x in text.splitlines() if x.startswith("| bayesian (crossfit, one"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "0" and cells[2] == "85.00%"
    assert cells[3] == "+5.00 pts" and cells[4] == "-1.00 pts"  # seed 0's uniform, holdout
    assert cells[5] == "100 (0.50×)"  # samples to 80%: uniform's mean is (200 + 100) / 2
    assert cells[7:] == ["10.0%", "30.0%"]


def test_cleaned_runs_are_compared_at_their_own_step_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runs = [hf_grid.Run(hf_grid.ARM[a], "n40", 0) for a in ("uniform", "bayesian_crossfit_fwd",
            "clean_uniform_fwd", "clean_bayesian_fwd")]  # fmt: skip
    _patch(monkeypatch, "RUNS", runs)
    _patch(monkeypatch, "KEPT", tmp_path / "kept")
    monkeypatch.setattr(hf_grid.Run, "stored", property(lambda self: None))
    _run(tmp_path / "uniform-n40-s0", [0.70, 0.75, 0.80, 0.81], 0.4)  # samples 100 .. 400
    _run(tmp_path / "bayesian_crossfit_fwd-n40-s0", [0.80, 0.84, 0.86, 0.87], 0.1)
    _run(tmp_path / "clean_uniform_fwd-n40-s0", [0.78, 0.83], 0.05)  # 100 epochs, 200 samples
    _run(tmp_path / "clean_bayesian_fwd-n40-s0", [0.79, 0.82], 0.05)
    res = hf.results("n40", tmp_path)
    assert hf.at_samples(res["bayesian_crossfit_fwd"], 250) == pytest.approx(0.84)
    assert hf.at_samples(res["uniform"], 50) is None  # no evaluation within 50 samples
    lines = [x for x in hf.equal_steps_lines(res) if x]
    assert len(lines) == 1  # the cleaned bayesian run is a selecting run, not a baseline here
    assert "ends at 83.00% after 200 gradient samples" in lines[0]
    assert "anchor channel) 84.00%" in lines[0] and "uniform 75.00%" in lines[0]


def test_kept_records_of_different_sessions_are_on_different_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    results, runs = tmp_path / "results", tmp_path / "runs"
    _patch(monkeypatch, "RESULTS", results)
    _patch(monkeypatch, "KEPT", results / "holdout_free" / "runs")
    uniform, bayes = (
        hf_grid.Run(hf_grid.ARM["uniform"], "p30", 0),
        hf_grid.Run(hf_grid.ARM["bayesian_holdout"], "p30", 0),
    )
    _patch(monkeypatch, "RUNS", [uniform, bayes])
    for run in (uniform, bayes):
        _run(runs / run.name, [0.8], 0.1)
        (runs / run.name / "config.yaml").write_text("{}")
    hf.keep_records(runs, results / "holdout_free")  # one report: one session for both
    sessions = json.loads((hf_grid.KEPT / hf.SESSIONS).read_text())
    assert set(sessions) == {uniform.name, bayes.name} and len(set(sessions.values())) == 1

    def clock(run: hf_grid.Run) -> set[str]:
        return hf.Result(run.arm, [run], [[]], [hf_grid.KEPT / run.name]).clocks

    assert clock(uniform) == clock(bayes) != {""}
    (hf_grid.KEPT / hf.SESSIONS).write_text(json.dumps({uniform.name: "earlier"}))
    assert clock(uniform) == {"holdout_free/earlier"} and clock(bayes) != clock(uniform)
    hf.keep_records(runs, results / "holdout_free")  # a record kept before keeps its session
    assert json.loads((hf_grid.KEPT / hf.SESSIONS).read_text())[uniform.name] == "earlier"
