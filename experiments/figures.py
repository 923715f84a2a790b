"""The figures and HTML reports of docs/results, drawn again from the run records kept there.

Git keeps each study's tables (table.csv, table.md) and its runs' records (config, metrics,
summary under <study>/runs/), not the PNGs and report.html that ``bdsel report`` draws from
them. This script finds every table.csv under --results, reads the runs its ``runs`` column
names, finds each run's record in the nearest runs/ folder above the table, and writes the
figures and report.html beside the table; the table files stay as they are. A table whose
runs are not all kept is skipped, and said so.

    python experiments/figures.py                  # every table under docs/results
    python experiments/figures.py --only peers     # tables whose folder path contains "peers"
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import tempfile
from pathlib import Path

from bdsel.report import ReportError, make_report
from bdsel.rundir import METRICS

TARGET_COLUMN = re.compile(r"epochs_to_([0-9.]+)$")


def record_of(run: str, table_dir: Path, results: Path) -> Path | None:
    """The kept record of a run the table names: a path inside ``results`` (a table that read
    kept records), or ``runs/<study>/<name>``, kept as <dir>/runs/<name> in the table's folder
    or the nearest one above it, up to ``results``."""
    name = Path(run).name
    if f"{results.name}/" in run:
        kept = results / run.rsplit(f"{results.name}/", 1)[1]
        return kept if (kept / METRICS).is_file() else None
    for folder in [table_dir, *table_dir.parents]:
        if (folder / "runs" / name / METRICS).is_file():
            return folder / "runs" / name
        if folder == results:
            break
    return None


def read_table(path: Path) -> tuple[list[str], list[float]]:
    """The runs a table.csv names and the targets of its columns."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    runs = [run for row in rows for run in (row.get("runs") or "").split()]
    columns = rows[0].keys() if rows else []
    targets = [float(m.group(1)) for c in columns if (m := TARGET_COLUMN.match(c))]
    return runs, targets


def redraw(table: Path, results: Path) -> str:
    """Draw the figures and report.html of one table's folder; what happened, in one line."""
    runs, targets = read_table(table)
    records = [record_of(run, table.parent, results) for run in runs]
    missing = [run for run, rec in zip(runs, records, strict=True) if rec is None]
    if not runs or missing:
        return f"skipped {table.parent}: {len(missing)} of {len(runs)} runs not kept"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report = make_report(records, targets=targets or None, out_dir=Path(tmp))
        except ReportError as exc:
            return f"skipped {table.parent}: {exc}"
        drawn = [p for p in report.files.values() if p.suffix in (".png", ".html")]
        for path in drawn:
            shutil.copyfile(path, table.parent / path.name)
    return f"drew {table.parent}: {', '.join(sorted(p.name for p in drawn))}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("docs/results"))
    p.add_argument("--only", default="", help="only tables whose folder path contains this")
    args = p.parse_args()
    for table in sorted(args.results.rglob("table.csv")):
        if args.only in str(table.parent):
            print(redraw(table, args.results), flush=True)


if __name__ == "__main__":
    main()
