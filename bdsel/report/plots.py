"""Figures of a report as PNG bytes: accuracy curves, noise among the selected, Bayesian terms.

One line per table row: a single run as a line, a group of seeds as the mean
with a ± std band (at each epoch, over the seeds that have it).
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: reports are made on servers and in CI

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bdsel.report.render import common_title  # noqa: E402
from bdsel.report.rows import TableRow, pct  # noqa: E402
from bdsel.report.runs import END_TO_END  # noqa: E402

# Readable names of the selector scalars a bayesian run logs; others use their key.
SELECT_TITLES = {
    "select/alpha": "α (weight of the model's log-likelihood)",
    "select/term_loglik": "log-likelihood term: mean_s log p(y | f_s)",
    "select/term_zs": "zero-shot term: log p_zs(y | x)",
    "select/term_lme": "log mean_s p(y | f_s) (subtracted in the score)",
    "select/pred_std": "predictive std of the sampled logits",
    "select/zs_agree": "zero-shot prediction agrees with the label",
}
DPI = 120


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def group_series(row: TableRow, key: str, x: str = "epoch") -> tuple[np.ndarray, ...]:
    """(x, mean, std) of ``key`` per epoch over the row's runs, each float64 [n_epochs].

    ``x="epoch"`` gives epochs; ``x="wall_s"`` the mean training time at each epoch,
    ``x="e2e_s"`` the mean end-to-end time (the predictor's seconds first).
    std is 0 where fewer than two runs have a value. Epochs with no value are dropped.
    """
    per_epoch: dict[int, list[tuple[float, float]]] = {}
    for run in row.runs:
        last: dict[int, tuple[float, float]] = {}  # several evals in one epoch: keep the last
        for ep, xv, yv in zip(run.epochs, run.column(x), run.column(key), strict=True):
            if math.isfinite(yv) and math.isfinite(xv):
                last[int(ep)] = (xv, yv)
        for ep, pair in last.items():
            per_epoch.setdefault(ep, []).append(pair)
    epochs = sorted(per_epoch)
    xs = np.array([np.mean([p[0] for p in per_epoch[e]]) for e in epochs], dtype=np.float64)
    ys = [np.array([p[1] for p in per_epoch[e]]) for e in epochs]
    mean = np.array([v.mean() for v in ys], dtype=np.float64)
    std = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in ys], dtype=np.float64)
    return xs, mean, std


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, **line_kw) -> None:
    ax.plot(x, mean, marker="o" if x.size <= 30 else None, markersize=3, **line_kw)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=line_kw["color"], alpha=0.2, lw=0)


def _time_unit(max_seconds: float) -> tuple[float, str]:
    if max_seconds >= 3 * 3600:
        return 3600.0, "h"
    if max_seconds >= 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _finish(fig: Figure, ax: Axes, title: str, rows: list[TableRow]) -> None:
    shared = common_title(rows)
    ax.set_title(f"{title} ({shared})" if shared else title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _target_lines(ax: Axes, targets: list[float]) -> None:
    for t in targets:
        ax.axhline(100 * t, color="0.5", lw=0.8, ls=":", zorder=0)
        ax.annotate(
            f"target {pct(t)}",
            xy=(1.0, 100 * t),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize="x-small",
            color="0.4",
        )


def accuracy_figure(rows: list[TableRow], targets: list[float], x: str) -> bytes:
    """Test accuracy (%) against epoch (``x="epoch"``) or seconds end to end (``x="e2e_s"``:
    a run that read a predictor's cache starts at what it cost, a dotted line in its colour)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    series = [group_series(row, "test_acc", x) for row in rows]
    scale, unit = 1.0, ""
    if x != "epoch":
        longest = max((s[0].max() for s in series if s[0].size), default=1.0)
        scale, unit = _time_unit(longest)
    for row, color, (xs, mean, std) in zip(rows, _colors(len(rows)), series, strict=True):
        _band(ax, xs / scale, 100 * mean, 100 * std, color=color, label=row.label)
        start = row.predictor_s
        if x == END_TO_END and xs.size and math.isfinite(start) and start > 0:
            ax.axvline(start / scale, color=color, lw=0.8, ls=":", alpha=0.8)
    _target_lines(ax, targets)
    ax.set_xlabel("epoch" if x == "epoch" else f"seconds end to end: predictor + training ({unit})")
    ax.set_ylabel("test accuracy (%)")
    what = "epoch" if x == "epoch" else "time, predictor included"
    _finish(fig, ax, f"Test accuracy vs {what}", rows)
    return _png(fig)


def noise_figure(rows: list[TableRow]) -> bytes:
    """Percentage of noisy labels among the selected points per epoch; base rate dashed."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    noisy = [
        (row, color) for row, color in zip(rows, _colors(len(rows)), strict=True) if row.has_noise
    ]
    bases = [group_series(row, "base_noisy_frac") for row, _ in noisy]
    # One grey base line when every row has the same base rate, else one per row in its colour.
    shared_base = all(
        b[0].size and b[0].shape == bases[0][0].shape and np.allclose(b[1], bases[0][1])
        for b in bases
    )
    for (row, color), (bx, base, _) in zip(noisy, bases, strict=True):
        xs, mean, std = group_series(row, "selected_noisy_frac")
        _band(ax, xs, 100 * mean, 100 * std, color=color, label=row.label)
        if bx.size and not shared_base:
            ax.plot(bx, 100 * base, color=color, ls="--", lw=1.2)
    if shared_base:
        ax.plot(bases[0][0], 100 * bases[0][1], color="0.3", ls="--", lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("noisy labels among selected points (%)")
    ax.set_ylim(bottom=0)
    _finish(fig, ax, "Label noise in the selected points", rows)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", ls="--"))
    labels.append("base rate (training set)")
    ax.legend(handles, labels, fontsize="small", loc="best")
    return _png(fig)


def select_scalars_figure(rows: list[TableRow], keys: list[str], title: str) -> bytes:
    """One panel per ``select/`` scalar in ``keys`` against epoch, every run that logs it."""
    rows_with = [r for r in rows if any(set(keys) & set(run.select_keys) for run in r.runs)]
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = dict(zip(map(id, rows), _colors(len(rows)), strict=True))
    legend: dict[str, object] = {}
    for ax, key in zip(axes, keys, strict=False):
        for row in rows_with:
            xs, mean, std = group_series(row, key)
            if xs.size:
                _band(ax, xs, mean, std, color=colors[id(row)], label=row.label)
        ax.set_title(SELECT_TITLES.get(key, key.removeprefix("select/")), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center",
               ncols=min(4, len(legend) or 1))  # fmt: skip
    shared = common_title(rows_with)
    fig.suptitle(f"{title} ({shared})" if shared else title)
    return _png(fig)


def make_figures(rows: list[TableRow], targets: list[float]) -> tuple[dict[str, bytes], list[str]]:
    """All figures that apply, as {file name: PNG bytes}, and warnings for those skipped."""
    figures = {"accuracy_vs_epoch.png": accuracy_figure(rows, targets, "epoch")}
    warnings = []
    if any(np.isfinite(run.column("wall_s")).any() for r in rows for run in r.runs):
        figures["accuracy_vs_time.png"] = accuracy_figure(rows, targets, END_TO_END)
    else:
        warnings.append("no run logs wall_s: accuracy_vs_time.png skipped")
    if any(r.has_noise for r in rows):
        figures["noise_in_selection.png"] = noise_figure(rows)
    else:
        warnings.append("no run has label noise: noise_in_selection.png skipped")
    logged = {k for r in rows for run in r.runs for k in run.select_keys}
    bayesian = [k for k in SELECT_TITLES if k in logged]
    if bayesian:
        title = "Bayesian selection: objective terms and α per epoch"
        figures["bayesian_terms.png"] = select_scalars_figure(rows, bayesian, title)
    others = sorted(logged - set(SELECT_TITLES))
    if others:  # the baselines' scores, e.g. the loss of the selected vs of all candidates
        title = "Selection scores per epoch (batch means)"
        figures["selection_scores.png"] = select_scalars_figure(rows, others, title)
    return figures, warnings
