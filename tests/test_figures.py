"""experiments/figures.py: the figures of docs/results drawn again from the kept records."""

from __future__ import annotations

import figures
from test_report import write_run

from bdsel.report import make_report
from bdsel.rundir import METRICS


def _study(results, names):
    """A study as an experiment leaves it: records under <study>/runs/, a table beside."""
    for i, name in enumerate(names):
        write_run(results / "study" / "runs" / name, [0.5, 0.7, 0.9], seed=i)
    table = results / "study" / "n20"
    # The table names its runs where the experiment ran them, not where the records are kept.
    runs_dir = results.parent / "runs" / "study"
    for name in names:
        write_run(runs_dir / name, [0.5, 0.7, 0.9], seed=names.index(name))
    make_report([runs_dir / n for n in names], targets=[0.6, 0.8], out_dir=table)
    for drawn in [*table.glob("*.png"), table / "report.html"]:
        drawn.unlink()
    return table


def test_draws_the_figures_from_the_kept_records_and_leaves_the_tables(tmp_path):
    results = tmp_path / "docs" / "results"
    table = _study(results, ["uniform-s0", "uniform-s1"])
    before = {p.name: p.read_bytes() for p in table.iterdir()}
    line = figures.redraw(table / "table.csv", results)
    assert line.startswith("drew"), line
    assert (table / "report.html").is_file()
    assert (table / "accuracy_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name: p.read_bytes() for p in table.glob("table.*")} == before


def test_a_table_whose_runs_are_not_all_kept_is_skipped(tmp_path):
    results = tmp_path / "docs" / "results"
    table = _study(results, ["uniform-s0", "uniform-s1"])
    (results / "study" / "runs" / "uniform-s1" / METRICS).unlink()
    line = figures.redraw(table / "table.csv", results)
    assert line == f"skipped {table}: 1 of 2 runs not kept"
    assert not (table / "report.html").exists()


def test_reads_the_runs_and_targets_a_table_names(tmp_path):
    results = tmp_path / "docs" / "results"
    table = _study(results, ["a-s0", "b-s1"])
    runs, targets = figures.read_table(table / "table.csv")
    assert [r.rsplit("/", 1)[1] for r in runs] == ["a-s0", "b-s1"]
    assert targets == [0.6, 0.8]
