"""Tables and plots from run directories: the library side of ``bdsel report``.

report = make_report([Path("runs/fm-bayesian"), Path("runs/fm-uniform")])
rich.print(render_table(report)); print(*report.warnings, sep="\\n")
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from bdsel.report.html import render_html
from bdsel.report.plots import make_figures
from bdsel.report.render import Report, display_table, render_table, to_csv, to_markdown
from bdsel.report.rows import TableRow, TargetCell, build_rows
from bdsel.report.runs import (
    ReportError,
    RunRecord,
    find_run_dirs,
    load_run,
    load_runs,
    read_run_metrics,
)
from bdsel.rundir import RunDirError, atomic_write_bytes, atomic_write_text

__all__ = [
    "Report",
    "ReportError",
    "RunRecord",
    "TableRow",
    "TargetCell",
    "build_rows",
    "default_out_dir",
    "display_table",
    "find_run_dirs",
    "load_run",
    "load_runs",
    "make_report",
    "read_run_metrics",
    "render_table",
    "to_csv",
    "to_markdown",
]


def default_out_dir(run_paths: list[Path]) -> Path:
    """The run directory itself for one run; ``report/`` in the common parent of several."""
    if len(run_paths) == 1:
        return Path(run_paths[0])
    parent = Path(os.path.commonpath([str(Path(p).resolve()) for p in run_paths]))
    return parent / "report"


def _check_targets(targets: list[float]) -> list[float]:
    checked = []
    for t in targets:
        t = float(t)
        if not 0.0 <= t <= 1.0:
            hint = f" (did you mean {t / 100:g}?)" if 1.0 < t <= 100.0 else ""
            raise ReportError(f"target {t:g}: expected a test accuracy in [0, 1]{hint}")
        checked.append(t)
    return sorted(set(checked))


def make_report(
    run_dirs: list[Path], targets: list[float] | None = None, out_dir: Path | None = None
) -> Report:
    """Read run directories, build the table, write figures, table.csv/.md and report.html.

    ``run_dirs``: run directories, or directories holding runs at any depth.
    ``targets``: test accuracies in [0, 1]; default the union of the runs' ``report.targets``.
    ``out_dir``: default as in :func:`default_out_dir`; created if missing.
    Raises ReportError when a path is not a run and holds none, or a file is unreadable.
    Problems that still allow a report (a torn last metrics line, an unfinished run, a
    figure that does not apply) come back in ``Report.warnings``.
    """
    if not run_dirs:
        raise ReportError("no run directories given (expected at least one)")
    runs, warnings = load_runs([Path(p) for p in run_dirs])
    if targets is None:
        targets = [t for run in runs for t in run.targets]
        if not targets:
            warnings.append("no targets given and no run has report.targets: no target columns")
    targets = _check_targets(targets)
    rows = build_rows(runs, targets)
    out = Path(out_dir) if out_dir is not None else default_out_dir([r.path for r in runs])
    _check_out_dir(out)
    report = Report(
        rows=rows,
        targets=targets,
        runs=runs,
        warnings=warnings,
        out_dir=out,
        generated_at=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    figures, figure_warnings = make_figures(rows, targets)
    warnings.extend(figure_warnings)
    try:
        for name, png in figures.items():
            report.files[name] = atomic_write_bytes(out / name, png)
        report.files["table.csv"] = atomic_write_text(out / "table.csv", to_csv(rows, targets))
        report.files["table.md"] = atomic_write_text(out / "table.md", to_markdown(rows, targets))
        html = render_html(report, figures)
        report.files["report.html"] = atomic_write_text(out / "report.html", html)
    except (OSError, RunDirError) as exc:  # DiskFullError is a RunDirError
        written = ", ".join(p.name for p in report.files.values()) or "none"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReportError(
            f"cannot write the report in {out}: {reason} (files written whole before it: "
            f"{written}; none is half-written); free some space and run bdsel report again"
        ) from None
    return report


def _check_out_dir(out: Path) -> None:
    """Create ``out`` and make sure files can be written in it, before any figure is drawn."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder for the report's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe"):
            pass
    except OSError as exc:
        raise ReportError(f"cannot write the report in {out}: {exc.strerror or exc}") from exc
