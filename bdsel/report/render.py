"""The epochs-to-target table laid out: for the terminal (rich), CSV, Markdown and the HTML
report, from the rows ``bdsel.report.rows`` builds."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.table import Table as RichTable
from rich.text import Text

from bdsel.report.rows import TableRow, format_duration, mean_of, pct, std_of, variant_text
from bdsel.report.runs import (
    END_TO_END,
    RunRecord,
    config_get,
    reads_zeroshot,
)


def common_title(rows: list[TableRow]) -> str:
    """What all rows share (dataset, noise), for figure titles."""
    shared = []
    for attr in ("dataset", "noise"):
        values = {getattr(r, attr) for r in rows}
        if len(values) == 1:
            value = values.pop()
            shared.append(f"noise: {value}" if attr == "noise" else value)
    return ", ".join(shared)


def display_table(rows: list[TableRow], targets: list[float]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells as text) shared by the terminal, Markdown and HTML tables."""
    with_variant = any(r.variant for r in rows)
    headers = ["method", "dataset", "noise"] + (["config"] if with_variant else [])
    headers += ["seeds"] + [f"epochs to {pct(t)}" for t in targets]
    headers += [f"time to {pct(t)}" for t in targets]
    headers += [f"end to end to {pct(t)}" for t in targets]
    clock = equal_time(rows)
    headers += [f"acc at {format_duration(clock)} end to end"]
    headers += ["final acc", "best acc", "epochs", "wall time", "predictor", "selecting"]
    headers += ["noisy: selected vs base"]
    body = []
    for r in rows:
        seeds = ", ".join(str(s) for s in r.seeds)
        cells = [r.method, r.dataset, r.noise] + ([variant_text(r.variant)] if with_variant else [])
        cells += [f"{len(r.runs)} ({seeds})"] + [c.text() for c in r.cells]
        cells += [c.seconds_text() for c in r.cells]
        cells += [c.e2e_text() for c in r.cells]
        cells += [acc_at_text(r, clock)]
        share = mean_of([run.selection_share for run in r.runs])
        cells += [r.acc_text(r.final_accs), r.acc_text(r.best_accs), r.epochs_text()]
        cells += [format_duration(mean_of([run.wall_s for run in r.runs])), r.predictor_text()]
        cells += [pct(share) if math.isfinite(share) else "n/a", r.noise_text()]
        body.append(cells)
    for p in predictor_rows(rows):  # each predictor's own accuracy: is the training worth it?
        cells = [f"predictor: {p.name}", p.dataset, p.noise] + ([""] if with_variant else [])
        cells += [str(p.n_runs)] + ["" for _ in targets] * 3 + [""]
        cells += [pct(p.test_acc) if math.isfinite(p.test_acc) else "?", "", ""]
        cells += ["", p.seconds_text(), "", ""]
        body.append(cells)
    return headers, body


def _csv_value(x: float) -> str:
    return "" if x is None or not math.isfinite(x) else repr(float(x))


def to_csv(rows: list[TableRow], targets: list[float]) -> str:
    """Machine-readable numbers: fractions in [0, 1], seconds, empty cells for n/a."""
    variant_keys = list(dict.fromkeys(k for r in rows for k in r.variant))
    headers = ["method", "dataset", "noise_kind", "noise_rate", *variant_keys, "n_seeds", "seeds"]
    for t in targets:
        headers += [f"epochs_to_{t:g}", f"reached_{t:g}", f"seconds_to_{t:g}"]
        headers += [f"e2e_seconds_to_{t:g}"]
    headers += ["final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std"]
    headers += ["epochs_run", "wall_s", "predictor_s", "predictor_test_acc", "selection_share"]
    headers += ["selected_noisy_frac", "base_noisy_frac", "runs"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    for r in rows:
        line = [r.method, r.dataset, r.noise_kind, repr(r.noise_rate)]
        line += [str(r.variant[k]) if k in r.variant else "" for k in variant_keys]
        line += [len(r.runs), " ".join(str(s) for s in r.seeds)]
        for cell in r.cells:
            line += [_csv_value(cell.mean_epoch), cell.n_reached, _csv_value(cell.mean_seconds)]
            line += [_csv_value(mean_of([s for s in cell.e2e if s is not None]))]
        line += [_csv_value(mean_of(r.final_accs)), _csv_value(std_of(r.final_accs))]
        line += [_csv_value(mean_of(r.best_accs)), _csv_value(std_of(r.best_accs))]
        line += [_csv_value(mean_of([run.epochs_run for run in r.runs]))]
        line += [_csv_value(mean_of([run.wall_s for run in r.runs]))]
        line += [_csv_value(r.predictor_s), _csv_value(r.predictor_test_acc)]
        line += [_csv_value(mean_of([run.selection_share for run in r.runs]))]
        noisy = (r.selected_noisy_frac, r.base_noisy_frac) if r.has_noise else (math.nan,) * 2
        line += [_csv_value(noisy[0]), _csv_value(noisy[1])]
        line += [" ".join(str(run.path) for run in r.runs)]
        writer.writerow(line)
    return buf.getvalue()


def to_markdown(rows: list[TableRow], targets: list[float]) -> str:
    headers, body = display_table(rows, targets)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(headers), "|" + "---|" * len(headers)]
    out += [line(cells) for cells in body]
    out += [
        "",
        'Epochs to a target: first epoch with test accuracy >= target; "-" never reached '
        "(final accuracy in parentheses); for several seeds the mean over the seeds that "
        'reached it, with "k/n" when not all did. Time to a target: training wall-clock at '
        "that epoch (selection included, evaluation excluded), mean over the seeds that reached "
        "it. End to end: the same plus the predictor's seconds (what the caches the run read "
        "cost to make, fitting included; 0 for a run that reads none). Accuracy at T end to "
        "end: each run's test accuracy at its last evaluation within T seconds of predictor "
        "plus training (1% of slack: a budget stops a run a step past it), T the shortest "
        "run's end-to-end time (all runs on one clock). "
        "predictor rows: each predictor's own test accuracy and cost. "
        "Accuracies: mean ± std over seeds. "
        "selecting: share of wall time spent selecting. noisy: mean fraction of noisy labels "
        "among the selected points vs the base rate.",
    ]
    return "\n".join(out) + "\n"


@dataclass
class Report:
    """What ``make_report`` found and wrote."""

    rows: list[TableRow]
    targets: list[float]
    runs: list[RunRecord]
    warnings: list[str]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # file name -> path written
    generated_at: str = ""

    @property
    def title(self) -> str:
        shared = common_title(self.rows)
        n_runs, n_rows = len(self.runs), len(self.rows)
        what = f"{n_runs} run{'s' * (n_runs != 1)}, {n_rows} group{'s' * (n_rows != 1)}"
        return f"bdsel report: {shared} ({what})" if shared else f"bdsel report ({what})"


# The equal-seconds column reads each run up to this fraction past the shortest run's clock.
CLOCK_TOLERANCE = 0.01
TERMINAL_LABEL_MAX = 32  # a row's label in the terminal table (the CSV/MD/HTML keep it whole)


def equal_time(rows: list[TableRow]) -> float:
    """The clock every row is read at besides the epochs: the shortest run's end-to-end time,
    predictor included (the fastest method's whole run, when runs have the same budget), over
    the runs whose predictor cost is known (NaN when none is)."""
    clocks = [run.e2e_s for r in rows for run in r.runs if math.isfinite(run.e2e_s)]
    return min(clocks, default=math.nan)


@dataclass
class PredictorRow:
    """A predictor as the runs that read it recorded it: its own test accuracy and cost."""

    name: str
    dataset: str
    noise: str
    test_acc: float
    seconds: float
    n_runs: int

    def seconds_text(self) -> str:
        return format_duration(self.seconds) if math.isfinite(self.seconds) else "?"


def predictor_rows(rows: list[TableRow]) -> list[PredictorRow]:
    """One row per zero-shot predictor setting that the runs read (dataset, noise, predictor,
    cost): what the selecting runs must beat to be worth training."""
    found: dict[tuple, PredictorRow] = {}
    for r in rows:
        for run in r.runs:
            acc = run.predictor_test_acc
            if not reads_zeroshot(run.method) or not math.isfinite(acc):
                continue
            name = str(r.variant.get("zeroshot.predictor") or _predictor_name(run))
            key = (name, r.dataset, r.noise, round(acc, 6), round(run.predictor_s, 3))
            if key in found:
                found[key].n_runs += 1
            else:
                found[key] = PredictorRow(name, r.dataset, r.noise, acc, run.predictor_s, 1)
    return list(found.values())


def _predictor_name(run: RunRecord) -> str:
    return str(config_get(run.config, "zeroshot.predictor", "?"))


def acc_at_text(row: TableRow, seconds: float) -> str:
    """Each run's accuracy at ``seconds`` end to end: its last evaluation within them, give or
    take CLOCK_TOLERANCE (runs given one train.budget_s stop at the step that spends it, each
    a fraction of a second past it)."""
    if not all(math.isfinite(run.predictor_s) for run in row.runs):
        return "?"  # a cache from before bdsel recorded its cost: not on the clock
    within = seconds * (1 + CLOCK_TOLERANCE)
    accs = [run.acc_at_seconds(within, END_TO_END) for run in row.runs]
    if not math.isfinite(seconds) or not all(math.isfinite(a) for a in accs):
        return "-"
    return row.acc_text(accs)


def terminal_table(rows: list[TableRow], targets: list[float]) -> tuple[list[str], list[list[str]]]:
    """The fewest columns that say which method reaches which target first, and ends where:
    label, then per target the epochs and the end-to-end time to it (``ep 8, 1m17s``: predictor
    plus training), the accuracy at equal end-to-end seconds, the final accuracy and the share
    of mislabeled points among the selected (against the base rate); then a row per predictor
    with its cost (in the first target's column) and its own test accuracy. Fits 100 columns
    for a handful of targets; everything else is in table.csv / .md / report.html."""
    headers = ["method"] + [f"to {pct(t)}" for t in targets]
    clock = equal_time(rows)
    headers += [f"acc at {format_duration(clock)}", "final acc", "noisy (base)"]
    body = []
    for r in rows:
        # a setting by its last name: zeroshot.predictor=crossfit -> predictor=crossfit
        label = re.sub(r"[\w]+(?:\.[\w]+)*\.(\w+)=", r"\1=", r.label or r.method)
        if len(label) > TERMINAL_LABEL_MAX:
            label = label[: TERMINAL_LABEL_MAX - 1] + "…"
        cells = [label]
        for c in r.cells:
            cells.append(c.text() if c.n_reached == 0 else f"ep {c.text()}, {c.e2e_text()}")
        noisy = "n/a"
        if r.has_noise:
            noisy = f"{pct(r.selected_noisy_frac)} ({pct(r.base_noisy_frac)})"
        cells += [acc_at_text(r, clock), r.acc_text(r.final_accs), noisy]
        body.append(cells)
    for p in predictor_rows(rows):  # its cost where a run's time to a target would be
        cells = [f"predictor: {p.name}", p.seconds_text()] + ["" for _ in targets[1:]]
        body.append([*cells, "", pct(p.test_acc), ""])
    return headers, body


def render_table(report: Report) -> RichTable:
    """The table for the terminal (rich): :func:`terminal_table`'s columns."""
    headers, body = terminal_table(report.rows, report.targets)
    title = Text(report.title) if report.title else None  # run names are not markup
    table = RichTable(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(headers):
        table.add_column(Text(h), justify="left" if i == 0 else "right", overflow="fold")
    for cells in body:
        table.add_row(*(Text(c) for c in cells))
    return table
