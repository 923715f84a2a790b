"""The epochs-to-target table (the paper's main table, see README "Results"), one row per group
of seeds.

Runs whose configs differ only in ``seed`` and ``name`` form a group. A row shows
how many epochs each group needs to reach each target test accuracy, final and
best accuracy, time, the share of time spent selecting, and the fraction of
noisy labels among the selected points against the base rate.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.table import Table as RichTable
from rich.text import Text

from bdsel.report.runs import (
    END_TO_END,
    RunRecord,
    config_get,
    flatten_config,
    reads_zeroshot,
)
from bdsel.rundir import epochs_to_target, seconds_to_target

# Config keys that do not split a group: runs differing only here are seeds of one setting
# (eval.other_weights only adds the other weights' accuracy beside the one reported).
GROUP_IGNORED_KEYS = ("seed", "name", "eval.other_weights")
LABEL_MAX = 60  # characters of a legend label, seeds excluded
# Settings a label names in words rather than as key=value ("" leaves it out).
LABEL_NAMES = {"data.clean.cache": lambda v: "cleanlab" if v else ""}
# The four keys every row names; other differing keys show in the "config" column.
MAIN_KEYS = ("select.method", "data.name", "data.noise.kind", "data.noise.rate")
# select.* keys of the selection loop itself, which every method shares.
SHARED_SELECT_KEYS = (
    "select.n_candidates",
    "select.n_selected",
    "select.candidate_bn",
    "select.candidate_precision",
    "select.warmup_epochs",
)


def pct(x: float, digits: int = 1) -> str:
    """0.875 -> '87.5%', 0.87 -> '87%'."""
    text = f"{100 * x:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _std(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def _number(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _seconds_text(seconds: list[float | None]) -> str:
    """The mean over the runs that reached a target, with "k/n" when not all did; "-" when
    none did, "?" when a run's clock is unknown."""
    reached = [s for s in seconds if s is not None]
    if not reached:
        return "-"
    mean = _mean(reached)
    if not math.isfinite(mean):
        return "?"
    text = format_duration(mean)
    return text if len(reached) == len(seconds) else f"{text} ({len(reached)}/{len(seconds)})"


@dataclass
class TargetCell:
    """Epochs (and training seconds) to one target for every run of a row (None: never
    reached)."""

    target: float
    epochs: list[int | None]
    final_acc: float  # the row's mean final accuracy, shown when no run reached the target
    seconds: list[float | None] = field(default_factory=list)  # wall_s when first reached
    predictor: list[float] = field(default_factory=list)  # each run's predictor_s (NaN: unknown)

    @property
    def e2e(self) -> list[float | None]:
        """End to end: each run's predictor seconds + its training seconds to the target."""
        if not self.predictor:
            return [None] * len(self.seconds)
        return [
            None if s is None else s + p for s, p in zip(self.seconds, self.predictor, strict=True)
        ]

    def e2e_text(self) -> str:
        return _seconds_text(self.e2e)

    @property
    def mean_seconds(self) -> float:
        """Mean over the runs that reached the target (NaN when none did)."""
        return _mean([s for s in self.seconds if s is not None])

    def seconds_text(self) -> str:
        return _seconds_text(self.seconds)

    @property
    def n_reached(self) -> int:
        return sum(e is not None for e in self.epochs)

    @property
    def mean_epoch(self) -> float:
        """Mean over the runs that reached the target (NaN when none did)."""
        return _mean([float(e) for e in self.epochs if e is not None])

    def text(self) -> str:
        n = len(self.epochs)
        if self.n_reached == 0:
            return f"- ({pct(self.final_acc)})"
        if self.n_reached < n:
            return f"{_number(self.mean_epoch)} ({self.n_reached}/{n})"
        return _number(self.mean_epoch)


@dataclass
class TableRow:
    """One group of runs that differ only in seed (and name)."""

    method: str
    dataset: str
    noise_kind: str
    noise_rate: float
    variant: dict[str, Any]  # config keys (besides MAIN_KEYS) whose values differ between rows
    runs: list[RunRecord]
    cells: list[TargetCell] = field(default_factory=list)
    label: str = ""  # short name for legends: the parts that vary between rows

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]

    @property
    def noise(self) -> str:
        return "none" if self.noise_rate == 0 else f"{pct(self.noise_rate)} {self.noise_kind}"

    @property
    def has_noise(self) -> bool:
        return any(run.has_noise for run in self.runs)

    @property
    def final_accs(self) -> list[float]:
        return [run.final_acc for run in self.runs]

    @property
    def best_accs(self) -> list[float]:
        return [run.best_acc for run in self.runs]

    @property
    def selected_noisy_frac(self) -> float:
        """Mean over runs of the mean over evaluations of selected_noisy_frac (NaN: no noise)."""
        return _mean([_mean(list(r.column("selected_noisy_frac"))) for r in self.runs])

    @property
    def base_noisy_frac(self) -> float:
        return _mean([_mean(list(r.column("base_noisy_frac"))) for r in self.runs])

    def epochs_text(self) -> str:
        runs = sorted(r.epochs_run for r in self.runs)
        text = str(runs[0]) if runs[0] == runs[-1] else f"{runs[0]}-{runs[-1]}"
        planned = {r.planned_epochs for r in self.runs}
        if not all(r.complete for r in self.runs) and len(planned) == 1 and None not in planned:
            text += f"/{planned.pop()}"  # unfinished: epochs run of epochs planned
        return text

    def acc_text(self, values: list[float]) -> str:
        if len(values) == 1:
            return pct(values[0])
        return f"{100 * _mean(values):.1f} ± {100 * _std(values):.1f}%"

    @property
    def predictor_s(self) -> float:
        """Mean over runs of what their caches cost (0: none read; NaN: not known)."""
        return float(np.mean([run.predictor_s for run in self.runs]))

    @property
    def predictor_test_acc(self) -> float:
        return _mean([run.predictor_test_acc for run in self.runs])

    def predictor_text(self) -> str:
        """The predictor's cost: "-" for none, "?" where unknown, else its seconds."""
        seconds = self.predictor_s
        if seconds == 0:
            return "-"
        return format_duration(seconds) if math.isfinite(seconds) else "?"

    def noise_text(self) -> str:
        if not self.has_noise:
            return "n/a"
        return f"{pct(self.selected_noisy_frac)} vs {pct(self.base_noisy_frac)}"


def grouping_view(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config, flattened, as rows compare it: without GROUP_IGNORED_KEYS; a key its
    config.yaml lacks (written before the key existed) at today's default; without the
    settings of the zero-shot predictors it does not use (``zeroshot.<other predictor>.*``),
    and without any ``zeroshot.*`` setting when its method reads no zero-shot table."""
    flat = {**_config_defaults(), **flatten_config(config)}
    predictor = flat.get("zeroshot.predictor")
    reads = reads_zeroshot(str(flat.get("select.method")))
    for key in list(flat):
        parts = key.split(".")
        unused_predictor = parts[0] == "zeroshot" and len(parts) > 2 and parts[1] != predictor
        if key in GROUP_IGNORED_KEYS or unused_predictor or (parts[0] == "zeroshot" and not reads):
            del flat[key]
    return flat


@functools.cache
def _config_defaults() -> dict[str, Any]:
    """Today's defaults, flattened (read only: callers merge it into a new dict)."""
    from bdsel.config import Config  # dataclasses only: no torch

    return flatten_config(dataclasses.asdict(Config()))


def build_rows(runs: list[RunRecord], targets: list[float]) -> list[TableRow]:
    """Group runs by config (ignoring seed and name), in order of first appearance."""
    flats = [grouping_view(run.config) for run in runs]
    all_keys = sorted({k for flat in flats for k in flat} - set(MAIN_KEYS))
    missing = "<unset>"

    def varies(keys: list[str], members: list[dict[str, Any]]) -> list[str]:
        """Keys with more than one value among the members that have them (a key a run
        lacks does not apply to it: another predictor's settings)."""
        return [k for k in keys if len({repr(f[k]) for f in members if k in f}) > 1]

    # A method's own settings (bayesian's α means nothing to uniform) split rows only between
    # runs of that method and setting; other keys (the batch sizes included) split any runs.
    def own(key: str) -> bool:
        return key.startswith("select.") and key not in SHARED_SELECT_KEYS

    def setting(run: RunRecord) -> tuple:
        return (run.method, run.dataset, run.noise_kind, run.noise_rate)

    by_setting: dict[tuple, list[dict[str, Any]]] = {}
    for run, flat in zip(runs, flats, strict=True):
        by_setting.setdefault(setting(run), []).append(flat)
    shared_keys = varies([k for k in all_keys if not own(k)], flats)
    own_keys = {
        s: varies([k for k in all_keys if own(k)], members) for s, members in by_setting.items()
    }
    groups: dict[tuple, list[RunRecord]] = {}
    first_flat: dict[tuple, dict[str, Any]] = {}  # each group's first run's grouping view
    for run, flat in zip(runs, flats, strict=True):
        keys = shared_keys + own_keys[setting(run)]
        key = setting(run) + tuple((k, repr(flat.get(k, missing))) for k in keys)
        groups.setdefault(key, []).append(run)
        first_flat.setdefault(key, flat)
    rows = []
    for key, members in groups.items():
        first = first_flat[key]
        keys = [k for k in shared_keys + own_keys[setting(members[0])] if k in first]
        row = TableRow(
            method=members[0].method,
            dataset=members[0].dataset,
            noise_kind=members[0].noise_kind,
            noise_rate=members[0].noise_rate,
            variant={k: first[k] for k in keys},
            runs=members,
        )
        final = _mean(row.final_accs)
        row.cells = [
            TargetCell(
                t,
                [epochs_to_target(r.records, t) for r in members],
                final,
                [seconds_to_target(r.records, t) for r in members],
                [r.predictor_s for r in members],
            )
            for t in targets
        ]
        rows.append(row)
    _label_rows(rows)
    return rows


def _variant_text(variant: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items())


def _label_rows(rows: list[TableRow]) -> None:
    """Legend labels name only what differs between rows: the method, dataset and noise where
    they vary, and of the config only the keys that tell apart rows of the same method (a
    path by its file name, the shortest values first; a label longer than LABEL_MAX is cut)."""
    parts = [[r.method, r.dataset, r.noise] for r in rows]
    varying = [i for i in range(3) if len({p[i] for p in parts}) > 1] or [0]
    for row, p in zip(rows, parts, strict=True):
        peers = [r for r in rows if r.method == row.method]
        own = {
            k: v for k, v in row.variant.items() if len({repr(r.variant.get(k)) for r in peers}) > 1
        }
        if "zeroshot.predictor" in own and _cache_follows_predictor(peers):
            own.pop("zeroshot.cache", None)
        short = {k: Path(v).name if isinstance(v, str) and "/" in v else v for k, v in own.items()}
        short = dict(sorted(short.items(), key=lambda kv: len(str(kv[1]))))  # long ones last
        named = [LABEL_NAMES[k](v) for k, v in short.items() if k in LABEL_NAMES]
        short = {k: v for k, v in short.items() if k not in LABEL_NAMES}
        parts_ = [*(p[i] for i in varying), *(x for x in named if x), _variant_text(short)]
        label = " · ".join(x for x in parts_ if x)
        if len(label) > LABEL_MAX:
            label = label[: LABEL_MAX - 1] + "…"
        n = len(row.runs)
        row.label = label + (f" ({n} seeds)" if n > 1 else "")


def _cache_follows_predictor(rows: list[TableRow]) -> bool:
    """Whether each predictor among ``rows`` comes with one cache (the cache then says
    nothing the predictor does not)."""
    pairs = {(repr(r.variant.get("zeroshot.predictor")), repr(r.variant.get("zeroshot.cache")))
             for r in rows}  # fmt: skip
    return len(pairs) == len({predictor for predictor, _ in pairs})


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
        cells = [r.method, r.dataset, r.noise] + (
            [_variant_text(r.variant)] if with_variant else []
        )
        cells += [f"{len(r.runs)} ({seeds})"] + [c.text() for c in r.cells]
        cells += [c.seconds_text() for c in r.cells]
        cells += [c.e2e_text() for c in r.cells]
        cells += [acc_at_text(r, clock)]
        share = _mean([run.selection_share for run in r.runs])
        cells += [r.acc_text(r.final_accs), r.acc_text(r.best_accs), r.epochs_text()]
        cells += [format_duration(_mean([run.wall_s for run in r.runs])), r.predictor_text()]
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
            line += [_csv_value(_mean([s for s in cell.e2e if s is not None]))]
        line += [_csv_value(_mean(r.final_accs)), _csv_value(_std(r.final_accs))]
        line += [_csv_value(_mean(r.best_accs)), _csv_value(_std(r.best_accs))]
        line += [_csv_value(_mean([run.epochs_run for run in r.runs]))]
        line += [_csv_value(_mean([run.wall_s for run in r.runs]))]
        line += [_csv_value(r.predictor_s), _csv_value(r.predictor_test_acc)]
        line += [_csv_value(_mean([run.selection_share for run in r.runs]))]
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
