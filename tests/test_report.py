"""bdsel.report on hand-made run directories: the table, the files, grouping, errors."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from bdsel_cli.main import app
from conftest import assert_one_line_error
from typer.testing import CliRunner

from bdsel.report import (
    ReportError,
    display_table,
    load_run,
    make_report,
    render_table,
)
from bdsel.targets import epochs_to_target, seconds_to_target

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    path: Path,
    accs: list[float],
    *,
    method: str = "uniform",
    seed: int = 0,
    noise_rate: float = 0.0,
    targets: tuple[float, ...] = (0.8,),
    bayesian_scalars: bool = False,
    complete: bool = True,
    extra: dict | None = None,
) -> Path:
    """A run directory as `bdsel train` writes it: one metrics record per epoch."""
    path.mkdir(parents=True)
    noisy = noise_rate > 0
    config = {
        "seed": seed,
        "name": f"{method}-s{seed}",
        "data": {
            "name": "fashion_mnist",
            "noise": {"kind": "symmetric" if noisy else "none", "rate": noise_rate},
        },
        "select": {"method": method, "n_candidates": 320, "n_selected": 32},
        "train": {"epochs": len(accs)},
        "report": {"targets": list(targets)},
    }
    for key, value in (extra or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for i, acc in enumerate(accs):
        record = {
            "epoch": i + 1,
            "step": 100 * (i + 1),
            "samples_seen": 3200 * (i + 1),
            "test_acc": acc,
            "test_loss": 1.0 - acc,
            "train_loss": 1.2 - acc,
            "selected_noisy_frac": noise_rate / (i + 2) if noisy else None,
            "base_noisy_frac": noise_rate if noisy else None,
            "wall_s": 10.0 * (i + 1),
            "selection_s": 2.5 * (i + 1),
            "lr": 1e-3,
        }
        if bayesian_scalars:
            record |= {
                "select/alpha": 0.2,
                "select/term_loglik": -1.0 / (i + 1),
                "select/term_zs": -0.5,
                "select/term_lme": 0.8 / (i + 1),
                "select/pred_std": 0.1,
                "select/zs_agree": 0.9,
            }
        lines.append(json.dumps(record))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if complete:
        summary = {
            "status": "complete",
            "epochs_run": len(accs),
            "final_test_acc": accs[-1],
            "best_test_acc": max(accs),
            "wall_s": 10.0 * len(accs),
            "selection_s": 2.5 * len(accs),
        }
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def cells_by_header(report) -> list[dict[str, str]]:
    headers, body = display_table(report.rows, report.targets)
    return [dict(zip(headers, cells, strict=True)) for cells in body]


def test_epochs_to_target_boundary(tmp_path):
    run, _ = load_run(write_run(tmp_path / "r", [0.5, 0.7999, 0.8, 0.9]))
    assert epochs_to_target(run.records, 0.8) == 3  # equal counts as reached; 0.7999 does not
    assert epochs_to_target(run.records, 0.79991) == 3
    assert epochs_to_target(run.records, 0.7999) == 2
    assert epochs_to_target(run.records, 0.9) == 4
    assert epochs_to_target(run.records, 0.9001) is None


def test_float32_accuracy_counts_at_target(tmp_path):
    acc32 = float(np.float32(0.7))  # 0.699999988...: an accuracy computed in float32
    assert acc32 < 0.7
    run, _ = load_run(write_run(tmp_path / "r", [0.5, acc32]))
    assert epochs_to_target(run.records, 0.7) == 2


def test_never_reached_shows_final_accuracy(tmp_path):
    run_dir = write_run(tmp_path / "r", [0.6, 0.88, 0.87], targets=(0.8, 0.9))
    report = make_report([run_dir])
    (row,) = cells_by_header(report)
    assert row["epochs to 80%"] == "2"
    assert row["epochs to 90%"] == "- (87%)"  # the final accuracy, not the best (88%)
    assert row["final acc"] == "87%"
    assert row["best acc"] == "88%"
    assert report.out_dir == run_dir  # one run: the report sits in the run directory


def test_every_file_written_and_valid(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "bayes", [0.5, 0.75, 0.85], method="bayesian", noise_rate=0.2,
              bayesian_scalars=True, targets=(0.7, 0.8))  # fmt: skip
    write_run(runs / "unif", [0.4, 0.6, 0.72], method="uniform", noise_rate=0.2,
              targets=(0.7, 0.8))  # fmt: skip
    report = make_report([runs])
    out = runs / "report"
    assert report.out_dir.resolve() == out.resolve()
    names = {"accuracy_vs_epoch.png", "accuracy_vs_time.png", "noise_in_selection.png",
             "bayesian_terms.png", "table.csv", "table.md", "report.html"}  # fmt: skip
    assert set(report.files) == names
    assert {p.name for p in out.iterdir()} == names  # no temporary files left behind
    for name in names:
        if name.endswith(".png"):
            png = (out / name).read_bytes()
            assert png.startswith(PNG_MAGIC) and len(png) > 5000, name

    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [r["method"] for r in rows] == ["bayesian", "uniform"]
    assert rows[0]["epochs_to_0.7"] == "2.0" and rows[0]["epochs_to_0.8"] == "3.0"
    assert rows[1]["epochs_to_0.7"] == "3.0" and rows[1]["epochs_to_0.8"] == ""
    assert rows[1]["reached_0.8"] == "0"
    assert rows[0]["seconds_to_0.8"] == "30.0" and rows[1]["seconds_to_0.8"] == ""
    assert float(rows[1]["final_acc_mean"]) == pytest.approx(0.72)
    assert float(rows[0]["selection_share"]) == pytest.approx(0.25)
    assert float(rows[0]["base_noisy_frac"]) == pytest.approx(0.2)

    md = (out / "table.md").read_text()
    assert "| bayesian | fashion_mnist | 20% symmetric |" in md
    assert "- (72%)" in md

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "- (72%)" in page and "bayesian" in page and "20% symmetric" in page
    assert "25%" in page  # share of time spent selecting
    assert report.warnings == []  # both runs finished, noise present


def test_partial_last_line_is_dropped_with_warning(tmp_path):
    run_dir = write_run(tmp_path / "r", [0.5, 0.6, 0.7], complete=False)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "step": 400, "test_acc": 0.9')  # killed mid-write
    report = make_report([run_dir], targets=[0.85])
    assert any("line 4 is incomplete" in w for w in report.warnings)
    assert len(report.runs[0].records) == 3
    (row,) = cells_by_header(report)
    assert row["epochs to 85%"] == "- (70%)"  # the torn 0.9 record is not counted
    assert row["epochs"] == "3/3"


def test_corrupt_middle_line_is_an_error(tmp_path):
    run_dir = write_run(tmp_path / "r", [0.5, 0.6, 0.7])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match="line 2"):
        make_report([run_dir])


def test_a_validation_run_is_refused_by_name(tmp_path):
    run_dir = write_run(tmp_path / "r", [0.5, 0.6])
    text = (run_dir / "metrics.jsonl").read_text().replace('"test_acc"', '"val_acc"')
    (run_dir / "metrics.jsonl").write_text(text)
    with pytest.raises(ReportError, match="data.validation_fraction > 0"):
        make_report([run_dir])


def test_seeds_form_one_row(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "s0", [0.5, 0.8, 0.9, 0.9], seed=0, targets=(0.8, 0.9))
    write_run(runs / "s1", [0.5, 0.6, 0.7, 0.8], seed=1, targets=(0.8, 0.9))
    report = make_report([runs])
    assert len(report.rows) == 1
    (row,) = cells_by_header(report)
    assert row["seeds"] == "2 (0, 1)"
    assert row["epochs to 80%"] == "3"  # mean of 2 and 4
    assert row["epochs to 90%"] == "3 (1/2)"  # only seed 0 reached it
    # training seconds (wall_s = 10 s per epoch here) when each seed first reached it
    assert row["time to 80%"] == "30.0s"  # mean of 20 s and 40 s
    assert row["time to 90%"] == "30.0s (1/2)"
    assert seconds_to_target(report.rows[0].runs[1].records, 0.8) == pytest.approx(40.0)
    assert seconds_to_target(report.rows[0].runs[1].records, 0.9) is None
    assert row["final acc"] == "85.0 ± 7.1%"
    assert report.rows[0].label == "uniform (2 seeds)"


def test_other_config_difference_splits_groups(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "a", [0.5, 0.8], seed=0, extra={"select.n_selected": 32})
    write_run(runs / "b", [0.5, 0.8], seed=1, extra={"select.n_selected": 64})
    report = make_report([runs / "a", runs / "b"])
    rows = cells_by_header(report)
    assert [r["config"] for r in rows] == ["select.n_selected=32", "select.n_selected=64"]


def test_unset_keys_and_unused_predictor_settings_do_not_split(tmp_path):
    """A key a run's config lacks (written before it existed) is at its default; the settings
    of a predictor a run does not use do not split its seeds; where they apply, they do; a
    method that reads no zero-shot table is split by none of them."""
    runs = tmp_path / "runs"
    write_run(runs / "u0", [0.5, 0.8], extra={"zeroshot.predictor": "holdout"})
    write_run(runs / "u1", [0.5, 0.8], seed=1, extra={"zeroshot.predictor": "crossfit"})
    assert [len(r.runs) for r in make_report([runs]).rows] == [2]  # uniform reads neither
    runs = tmp_path / "bayes"
    bayes = {"method": "bayesian"}
    holdout = holdout_variant = {"zeroshot.predictor": "holdout"}
    write_run(
        runs / "s0", [0.5, 0.8], seed=0, **bayes, extra={**holdout, "zeroshot.crossfit.epochs": 30}
    )
    write_run(
        runs / "s1",
        [0.5, 0.8],
        seed=1,
        **bayes,
        extra={**holdout, "zeroshot.crossfit.epochs": 10, "eval.other_weights": True},
    )
    crossfit = {"zeroshot.predictor": "crossfit", "zeroshot.crossfit.epochs": 10}
    write_run(runs / "cf", [0.5, 0.8], seed=0, **bayes, extra=crossfit)
    rows = {r.variant["zeroshot.predictor"]: r for r in make_report([runs]).rows}
    assert {k: len(r.runs) for k, r in rows.items()} == {"holdout": 2, "crossfit": 1}
    assert [r.variant for r in rows.values()] == [{"zeroshot.predictor": k} for k in rows]
    write_run(
        runs / "cf30",
        [0.5, 0.8],
        seed=1,
        **bayes,
        extra={**crossfit, "zeroshot.crossfit.epochs": 30},
    )
    variants = [r.variant for r in make_report([runs]).rows]
    assert len(variants) == 3
    assert {"zeroshot.predictor": "crossfit", "zeroshot.crossfit.epochs": 30} in variants
    assert {"zeroshot.predictor": "holdout"} in variants
    # The retired eval.other_weights (records in docs/results carry it) does not split seeds.
    extra = {**holdout, "eval.other_weights": False, "eval.every": 1}
    write_run(runs / "s2", [0.5, 0.8], seed=2, **bayes, extra=extra)
    assert [len(r.runs) for r in make_report([runs]).rows if r.variant == holdout_variant] == [3]
    write_run(runs / "s3", [0.5, 0.8], seed=3, **bayes, extra={**extra, "eval.every": 2})
    assert len(make_report([runs]).rows) == 4  # eval.every still does


def test_a_methods_own_settings_split_only_its_rows(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "u", [0.5, 0.8], method="uniform")
    write_run(runs / "b1", [0.5, 0.8], method="bayesian", extra={"select.alpha": 0.1})
    report = make_report([runs / "u", runs / "b1"])
    assert [r.variant for r in report.rows] == [{}, {}]  # α is bayesian's alone: no column
    write_run(runs / "b2", [0.6, 0.9], method="bayesian", extra={"select.alpha": 0.3})
    write_run(runs / "u64", [0.5, 0.8], method="uniform", extra={"select.n_selected": 64})
    report = make_report([runs])
    variants = {(r.method, tuple(sorted(r.variant.items()))) for r in report.rows}
    assert len(report.rows) == 4
    assert ("bayesian", (("select.alpha", 0.1), ("select.n_selected", 32))) in variants
    assert ("uniform", (("select.n_selected", 64),)) in variants  # no alpha on uniform rows
    header, *lines = (report.out_dir / "table.csv").read_text().splitlines()
    assert "select.alpha" in header.split(",") and "select.n_selected" in header.split(",")


def test_nested_directories_expand(tmp_path):
    write_run(tmp_path / "sweep" / "fm" / "uniform" / "s0", [0.5, 0.8])
    write_run(tmp_path / "sweep" / "fm" / "bayesian" / "s0", [0.6, 0.9], method="bayesian")
    (tmp_path / "sweep" / "notes").mkdir()
    report = make_report([tmp_path / "sweep"])
    assert sorted(r.method for r in report.rows) == ["bayesian", "uniform"]
    assert report.out_dir.resolve() == (tmp_path / "sweep" / "fm" / "report").resolve()


def test_non_run_directory_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("not a run")
    with pytest.raises(ReportError, match="empty.*expected config.yaml and metrics.jsonl"):
        make_report([empty])
    with pytest.raises(ReportError, match="no such directory"):
        make_report([tmp_path / "missing"])


def test_runs_without_noise_show_na(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "clean", [0.5, 0.8])
    write_run(runs / "noisy", [0.5, 0.8], method="rho_loss", noise_rate=0.1)
    report = make_report([runs])
    rows = {r["method"]: r for r in cells_by_header(report)}
    assert rows["uniform"]["noisy: selected vs base"] == "n/a"
    assert rows["uniform"]["noise"] == "none"
    assert rows["rho_loss"]["noisy: selected vs base"] == "4.2% vs 10%"  # mean of 5% and 3.3%
    assert "noise_in_selection.png" in report.files

    clean = make_report([runs / "clean"])
    assert "noise_in_selection.png" not in clean.files
    assert any("no run has label noise" in w for w in clean.warnings)
    assert "bayesian_terms.png" not in clean.files


def test_targets_must_be_fractions(tmp_path):
    run_dir = write_run(tmp_path / "r", [0.5, 0.8])
    with pytest.raises(ReportError, match="did you mean 0.875"):
        make_report([run_dir], targets=[87.5])


def test_render_table_has_one_row_per_group(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "a", [0.5, 0.8], seed=0)
    write_run(runs / "b", [0.5, 0.8], seed=1)
    write_run(runs / "c", [0.5, 0.8], method="bayesian")
    table = render_table(make_report([runs]))
    assert table.row_count == 2
    assert [str(c.header) for c in table.columns] == [
        "method", "to 80%", "acc at 20.0s", "final acc", "noisy (base)"
    ]  # fmt: skip


def _width(table) -> int:
    from rich.console import Console

    console = Console(width=400, record=True, file=io.StringIO())
    console.print(table)
    return max(len(line.rstrip()) for line in console.export_text().splitlines())


def test_the_terminal_table_fits_100_columns(tmp_path):
    demo = tmp_path / "demo"
    for name, method, predictor in (
        ("bayesian_crossfit", "bayesian", "crossfit"), ("bayesian", "bayesian", "holdout"),
        ("rho_loss", "rho_loss", "holdout"), ("uniform", "uniform", "holdout"),
    ):  # fmt: skip
        write_run(demo / name, [0.7, 0.81, 0.86], method=method, noise_rate=0.2,
                  targets=(0.8, 0.85), extra={"zeroshot.predictor": predictor})  # fmt: skip
    report = make_report([demo])
    assert _width(render_table(report)) <= 100
    labels = [r.label for r in report.rows]
    assert "uniform" in labels  # uniform's label names no predictor it never uses
    assert "bayesian · zeroshot.predictor=crossfit" in labels

    long = tmp_path / "long"
    methods = ["uniform", "bayesian", "rho_loss", "irreducible_loss", "train_loss", "grad_norm",
               "grad_norm_is", "svp", "infobatch"]  # fmt: skip
    for method in methods:
        for seed in (0, 1, 2):
            write_run(long / f"{method}-s{seed}", [0.6, 0.83, 0.875 + 0.001 * seed],
                      method=method, seed=seed, noise_rate=0.2, targets=(0.82, 0.87))  # fmt: skip
    report = make_report([long])
    assert len(report.rows) == 9 and _width(render_table(report)) <= 100


def test_baseline_scores_get_their_own_figure(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "bayes", [0.5, 0.7], method="bayesian", bayesian_scalars=True)
    rho = write_run(runs / "rho", [0.5, 0.6], method="rho_loss")
    lines = [json.loads(x) for x in (rho / "metrics.jsonl").read_text().splitlines()]
    for i, record in enumerate(lines):
        record |= {"select/rho_selected": 1.0 / (i + 1), "select/rho_candidates": 0.1}
    (rho / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = make_report([runs])
    assert {"bayesian_terms.png", "selection_scores.png"} <= set(report.files)
    assert report.files["selection_scores.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_bayes = make_report([runs / "bayes"], out_dir=tmp_path / "b")
    assert "selection_scores.png" not in only_bayes.files


def test_report_command_prints_table_and_writes_files(tmp_path):
    from bdsel_cli.main import app
    from typer.testing import CliRunner

    runs = tmp_path / "runs"
    write_run(runs / "u", [0.5, 0.81], method="uniform", noise_rate=0.2)
    write_run(runs / "b", [0.7, 0.9], method="bayesian", noise_rate=0.2, bayesian_scalars=True)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["report", str(runs), "--targets", "0.8,0.85", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "bayesian" in result.output and "uniform" in result.output
    assert {p.name for p in out.iterdir()} >= {"table.csv", "report.html", "noise_in_selection.png"}
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing-here")])
    assert bad.exit_code == 2
    bad = CliRunner().invoke(app, ["report", str(runs), "--targets", "high"])
    assert bad.exit_code == 2 and "expected numbers" in bad.output


def test_legend_labels_name_what_tells_a_methods_rows_apart(tmp_path):
    runs = tmp_path / "runs"
    cache = "cache/" + "fashion_mnist-crossfit2-small_cnn-split20-" * 3 + "s0.h5"
    write_run(runs / "u", [0.5, 0.8], extra={"zeroshot.predictor": "holdout"})
    write_run(runs / "uc", [0.5, 0.8], seed=1, extra={"data.clean.cache": cache})
    write_run(runs / "b", [0.5, 0.8], method="bayesian", extra={"zeroshot.predictor": "holdout"})
    crossfit = {"zeroshot.predictor": "crossfit", "zeroshot.cache": cache}
    write_run(runs / "bcf", [0.5, 0.8], method="bayesian", extra=crossfit)
    labels = {r.runs[0].path.name: r.label for r in make_report([runs]).rows}
    assert labels["u"] == "uniform"  # its one row: the predictor settings say nothing of it
    assert labels["uc"] == "uniform · cleanlab"  # data.clean.cache, in words
    # each predictor has one cache here, so the cache says nothing more
    assert labels["b"] == "bayesian · zeroshot.predictor=holdout"
    assert labels["bcf"] == "bayesian · zeroshot.predictor=crossfit"
    write_run(runs / "bcf2", [0.5, 0.8], method="bayesian", extra=dict(crossfit, **{
        "zeroshot.cache": cache.replace("s0", "s1")}))  # fmt: skip
    labels = {r.runs[0].path.name: r.label for r in make_report([runs]).rows}
    cf = labels["bcf"]  # two crossfit caches: the cache tells them apart, by its file name
    assert cf.startswith("bayesian · zeroshot.predictor=crossfit, zeroshot.cache=fash")
    assert "cache/" not in cf and len(cf) == 60 and cf.endswith("…")  # cut at 60 characters


def test_every_run_is_read_at_the_shortest_runs_training_time(tmp_path):
    from bdsel.report.render import terminal_table

    runs = tmp_path / "runs"
    write_run(runs / "slow", [0.5, 0.7, 0.9], method="full")  # wall 10, 20, 30 s
    write_run(runs / "fast", [0.6, 0.8])  # uniform, wall 10, 20 s: the clock is 20 s
    # bayesian read a cache whose cost is not recorded: it is not on the clock
    write_run(runs / "old", [0.6, 0.8], method="bayesian")
    report = make_report([runs])
    headers, body = terminal_table(report.rows, report.targets)
    column = headers.index("acc at 20.0s")
    got = {cells[0]: cells[column] for cells in body}
    assert got == {"full": "70%", "uniform": "80%", "bayesian": "?"}
    slow = next(r for r in report.runs if r.method == "full")
    assert slow.acc_at_seconds(29.9) == 0.7 and slow.acc_at_seconds(30) == 0.9
    assert math.isnan(slow.acc_at_seconds(5))


runner = CliRunner()


def test_a_report_to_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_report import write_run

    runs = tmp_path / "runs"
    write_run(runs / "a", [0.5, 0.7])
    real_fsync, calls = os.fsync, []

    def fsync_then_full(fd: int) -> None:  # the first file goes through, then the disk is full
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_full)
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "cannot write the report", "no space left", "free some space")
    assert "none is half-written" in result.output and len(calls) == 2
    assert not list((tmp_path / "out").glob(".*.tmp"))
