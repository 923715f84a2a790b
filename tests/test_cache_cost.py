"""experiments/cache_cost.py: the alternating schedule, the commands, the ratio it reports."""

from pathlib import Path

import cache_cost as cc


def test_the_schedule_puts_a_holdout_run_on_each_side_of_every_crossfit_one():
    assert cc.schedule(2) == ["holdout", "crossfit", "holdout"]
    assert cc.schedule(3) == ["holdout", "crossfit", "holdout", "crossfit", "holdout"]


def test_each_command_writes_its_own_scratch_file_and_only_crossfit_names_its_predictor():
    held = cc.command("holdout", ["data.noise.rate=0.4"], Path("/s/0.h5"))
    cross = cc.command("crossfit", ["data.noise.rate=0.4"], Path("/s/1.h5"))
    assert held[-2:] == ["--out", "/s/0.h5"] and cross[-2:] == ["--out", "/s/1.h5"]
    assert "zeroshot.predictor=crossfit" in cross and "zeroshot.predictor=crossfit" not in held
    assert "data.noise.rate=0.4" in held and "data.noise.rate=0.4" in cross


def test_the_ratio_is_of_the_means_and_the_holdout_spread_is_shown():
    steps = (100, 10.0)
    runs = [("holdout", 200.0, steps), ("crossfit", 450.0, (300, 20.0)), ("holdout", 250.0, steps)]
    text = cc.table(runs, [])
    assert "Crossfit / hold-out: 2.00×" in text  # 450 / mean(200, 250)
    assert "200.0–250.0 s" in text
    assert "| 2 | crossfit | 450.0 | 300 | 15.0 |" in text
    assert "Training steps, crossfit / hold-out: 3.00×" in text  # 300 / 100


def test_seconds_are_read_from_the_cache_commands_own_line(tmp_path: Path):
    log = tmp_path / "0_holdout.txt"
    log.write_text(
        "crossfit model 1/2 ━━━ 944/944   steps 0:00:58 0:00:00\n"
        "crossfit model 2/2 ━━━ 2124/2124 steps 0:01:51 0:00:00\n"
        "a bar cut off ━━━ 12/2124 steps 0:00:01 0:02:00\n"
        "│ time (fitting the predictor included) │ 189.1s │\n"
    )
    assert cc.seconds_of(log) == 189.1
    assert cc.steps_of(log) == (944 + 2124, 58.0 + 111.0)  # finished bars only
