"""The rows of the epochs-to-target table (the paper's main table), one per group of seeds;
``bdsel.report.render`` lays them out for the terminal, CSV, Markdown and HTML.

Runs whose configs differ only in ``seed`` and ``name`` form a group. A row shows
how many epochs each group needs to reach each target test accuracy, final and
best accuracy, time, the share of time spent selecting, and the fraction of
noisy labels among the selected points against the base rate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bdsel.report.runs import (
    RunRecord,
    flatten_config,
    reads_zeroshot,
)
from bdsel.targets import epochs_to_target, seconds_to_target

# Config keys that do not split a group: runs differing only here are seeds of one setting
# (name and eval.other_weights are retired keys that records in docs/results still carry: a
# run's name, and the other weights' accuracy beside the one reported).
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
    "select.candidate_precision",  # records made before it became the device's choice
    "select.warmup_epochs",
)


def pct(x: float, digits: int = 1) -> str:
    """0.875 -> '87.5%', 0.87 -> '87%'."""
    text = f"{100 * x:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def mean_of(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def std_of(values: list[float]) -> float:
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
    mean = mean_of(reached)
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
        return mean_of([s for s in self.seconds if s is not None])

    def seconds_text(self) -> str:
        return _seconds_text(self.seconds)

    @property
    def n_reached(self) -> int:
        return sum(e is not None for e in self.epochs)

    @property
    def mean_epoch(self) -> float:
        """Mean over the runs that reached the target (NaN when none did)."""
        return mean_of([float(e) for e in self.epochs if e is not None])

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
        return mean_of([mean_of(list(r.column("selected_noisy_frac"))) for r in self.runs])

    @property
    def base_noisy_frac(self) -> float:
        return mean_of([mean_of(list(r.column("base_noisy_frac"))) for r in self.runs])

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
        return f"{100 * mean_of(values):.1f} ± {100 * std_of(values):.1f}%"

    @property
    def predictor_s(self) -> float:
        """Mean over runs of what their caches cost (0: none read; NaN: not known)."""
        return float(np.mean([run.predictor_s for run in self.runs]))

    @property
    def predictor_test_acc(self) -> float:
        return mean_of([run.predictor_test_acc for run in self.runs])

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

    return flatten_config(Config().to_dict())  # the sections' own keys (no owner's)


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
        final = mean_of(row.final_accs)
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


def variant_text(variant: dict[str, Any]) -> str:
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
        parts_ = [*(p[i] for i in varying), *(x for x in named if x), variant_text(short)]
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
