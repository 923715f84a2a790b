"""The offline default's evidence (docs/results/offline/): what the demo setting shows, with
the evaluation (weight EMA, recalibrated BN), the plateau-fit hold-out predictor and the
fixed-budget crossfit predictor.

Studies on Fashion-MNIST (configs/fashion_mnist.yaml), 20% symmetric noise unless named:

- ``thirty``: the demo's 30 epochs, seeds 0 and 1: uniform, bayesian, rho_loss with the
  hold-out predictor (fitted temperature), and bayesian with the ``crossfit`` predictor
  (seed 0's crossfit models serve every seed, as the hold-out model does).
- ``hundred``: the long table. Every method for 100 epochs (long enough for uniform's EMA
  accuracy to flatten), seeds 0, 1 and 2, evaluated every 4th epoch, bayesian with either
  predictor; its targets come from uniform alone (RHO-LOSS's rule, ``bdsel.targets.uniform_targets``).
  Does selection cap the final accuracy, how many epochs and seconds does it save?
- ``noise0``, ``noise40``: the same length at 0% and 40% noise for uniform, rho_loss and
  bayesian with either predictor, seeds 0, 1 and 2.
- ``sharpen``: bayesian with the crossfit predictor at temperature 1/3 instead of the plain
  fit to the observed labels (about 1.04), and at the temperature fitted with the labels'
  noise (0.56, the default), seeds 0 and 1, beside the ``hundred`` runs of the same seeds:
  does a sharper crossfit predictor keep the mislabeled points out over a long run?
  ``sharpen40``: the denoised temperature at 40% noise, beside ``noise40``'s seeds 0 and 1.
- ``ratio``: n_B = 160 instead of 320 (n_b = 32; 15 epochs = as many steps as 30 at 320),
  seeds 0 and 1.

Runs go under ``--runs`` (default runs/exp), one process per core with one thread each
(``--jobs``), each a plain ``bdsel train`` whose command is in RUNS; a finished run (its
summary.json) is never rerun. Then ``bdsel report`` per study and the comparisons below
go to ``--out``. Wall-clock columns are training seconds (selection included, evaluation
excluded) of runs that each had a core to themselves.

    python experiments/offline_evidence.py                 # run what is missing, then report
    python experiments/offline_evidence.py --phase report  # tables and plots from the runs
    python experiments/offline_evidence.py --phase run --only 'bcfT033_*'  # some runs only
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import copy_records, experiment_main, log, run_pool
from matplotlib.figure import Figure
from offline_evidence_grid import (
    CROSSFIT,
    HUNDRED_SEEDS,
    LONG_NOTE,
    LONG_STUDIES,
    NOISE_METHODS,
    NOISE_NOTE,
    NOISE_STUDIES,
    PLAIN_T,
    RUNS,
    SHARED,
    TARGETS,
    cache_commands,
    command,
    selected,
)

from bdsel.report import make_report
from bdsel.rundir import has_summary, read_metrics, read_summary
from bdsel.targets import epochs_to_target, seconds_to_target, uniform_targets


def run_missing(args: argparse.Namespace) -> None:
    """The caches the missing runs need, then the runs, in ``selected`` order (but those
    ``--skip`` names)."""
    skip = set(getattr(args, "skip", "").split(","))
    todo = [n for n in selected(args.only) if not has_summary(args.runs / n) and n not in skip]
    run_pool(cache_commands(todo), args.runs, args.jobs)
    run_pool([(name, command(name, args.runs)) for name in todo], args.runs, args.jobs)


def _acc(records: list[dict[str, Any]]) -> dict[int, float]:
    return {int(r["epoch"]): float(r["test_acc"]) for r in records}


def hundred_comparison(args: argparse.Namespace) -> str:
    """Bayesian minus uniform at every evaluated epoch of the 100-epoch runs, per seed."""
    lines = ["| seed | epochs evaluated | min (bayesian − uniform) after epoch 5 | at epoch |"]
    lines[0] += " final uniform | final bayesian | final difference |"
    lines.append("|---|---|---|---|---|---|---|")
    for seed in HUNDRED_SEEDS:
        u_dir, b_dir = args.runs / f"u100_s{seed}", args.runs / f"b100_s{seed}"
        if not (has_summary(u_dir) and has_summary(b_dir)):
            continue
        u, b = _acc(read_metrics(u_dir)), _acc(read_metrics(b_dir))
        epochs = sorted(set(u) & set(b))
        late = [e for e in epochs if e > 5]
        worst = min(late, key=lambda e: b[e] - u[e])
        last = epochs[-1]
        lines.append(
            f"| {seed} | {len(epochs)} | {100 * (b[worst] - u[worst]):+.2f} pts | {worst} | "
            f"{100 * u[last]:.2f}% | {100 * b[last]:.2f}% | {100 * (b[last] - u[last]):+.2f} pts |"
        )
    return "\n".join(lines) + "\n\n" + uniform_flatness(args, "hundred")


def uniform_flatness(args: argparse.Namespace, study: str) -> str:
    """How much each uniform run of a study gained over its last 10 epochs: from the last
    evaluation at least 10 epochs before the end, to the end."""
    flat = []
    for name in uniform_runs(study_groups(args, study)):
        u = _acc(read_metrics(args.runs / name))
        epochs = sorted(u)
        ref = max((e for e in epochs if e <= epochs[-1] - 10), default=epochs[0])
        change = 100 * (u[epochs[-1]] - u[ref])
        flat.append(f"seed {RUNS[name].seed}: {change:+.2f} pts (epoch {ref} to {epochs[-1]})")
    return "Uniform over its last 10 epochs (flat means at most +0.3): " + ", ".join(flat) + "\n"


def speedup_lines(args: argparse.Namespace, names: list[str]) -> str:
    """Per run: epochs and training seconds to each target, relative to uniform's same seed."""
    out = ["| run | seed | " + " | ".join(f"epochs to {t:.0%} | s to {t:.0%}" for t in TARGETS)]
    out[0] += " | final |"
    out.append("|---|---|" + "---|---|" * len(TARGETS) + "---|")
    for name in names:
        if not has_summary(args.runs / name):
            continue
        records = read_metrics(args.runs / name)
        uniform = read_metrics(args.runs / f"u30_s{RUNS[name].seed}")
        cells = []
        for t in TARGETS:
            e, s = epochs_to_target(records, t), seconds_to_target(records, t)
            eu, su = epochs_to_target(uniform, t), seconds_to_target(uniform, t)
            cells.append("-" if e is None else f"{e}" + (f" ({e / eu:.2f}×)" if eu else ""))
            cells.append("-" if s is None else f"{s:.0f}" + (f" ({s / su:.2f}×)" if su else ""))
        final = 100 * records[-1]["test_acc"]
        out.append(f"| {name} | {RUNS[name].seed} | " + " | ".join(cells) + f" | {final:.1f}% |")
    return "\n".join(out) + "\n"


def uniform_runs(groups: dict[str, list[str]]) -> list[str]:
    """The uniform runs among a study's groups (``study_groups``); none if it has none."""
    return next((names for names in groups.values() if RUNS[names[0]].method == "u"), [])


def label(values: list[str]) -> str:
    """A run's method, with the predictor (and a set temperature) where the method reads one."""
    method = next(v.split("=")[1] for v in values if v.startswith("select.method="))
    if method in ("bayesian", "rho_loss", "irreducible_loss"):
        predictor = "crossfit" if CROSSFIT[0] in values else "holdout"
        t = [v.split("=")[1] for v in values
             if v.startswith("zeroshot.temperature=") and v not in PLAIN_T]  # fmt: skip
        if t:
            predictor += f", T={t[0]}"
        elif predictor == "crossfit":
            predictor += ", plain T" if PLAIN_T[0] in values else ", denoised T"
        method += f" ({predictor})"
    return method


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _mean_std(xs: list[float], scale: float = 100.0) -> tuple[float, float]:
    """Mean and sample std (0 for one value), times ``scale``."""
    return scale * _mean(xs), scale * statistics.stdev(xs) if len(xs) > 1 else 0.0


def _pm(xs: list[float], scale: float = 100.0, unit: str = "") -> str:
    """Mean ± sample std (the mean alone for one value)."""
    mean, std = _mean_std(xs, scale)
    return f"{mean:+.2f}" + (f" ± {std:.2f}" if len(xs) > 1 else "") + unit


def study_names(study: str) -> list[str]:
    """A study's runs: those it shares with another study, then its own, in RUNS order."""
    return SHARED.get(study, []) + [n for n, r in RUNS.items() if r.study == study]


def study_groups(args: argparse.Namespace, study: str) -> dict[str, list[str]]:
    """Finished runs of a study by their name's prefix (one method, several seeds)."""
    groups: dict[str, list[str]] = {}
    for name in study_names(study):
        if has_summary(args.runs / name):
            groups.setdefault(RUNS[name].group, []).append(name)
    return groups


def study_targets(args: argparse.Namespace, study: str) -> tuple[float, ...]:
    uniform = uniform_runs(study_groups(args, study))
    if study not in LONG_STUDIES or not uniform:
        return TARGETS
    return tuple(uniform_targets([read_metrics(args.runs / n)[-1]["test_acc"] for n in uniform]))


@dataclass
class MethodStats:
    """One method of a study over its seeds: the numbers behind a row of the long table."""

    label: str
    method: str  # the runs' method key (Run.method)
    seeds: list[str]
    epochs: dict[float, float | None]  # per target: mean over the seeds that reached it
    reached: dict[float, int]  # per target: how many seeds reached it
    seconds: dict[float, float | None]  # per target: mean training seconds, same seeds
    finals: list[float]  # final accuracy per seed
    diffs: list[float]  # final minus uniform's of the same seed (seeds uniform has)
    noisy: float | None  # mean share of mislabeled points among the selected

    def ratio(self, other: MethodStats | None, t: float, field: str = "epochs") -> float | None:
        mine, theirs = getattr(self, field)[t], other and getattr(other, field)[t]
        return mine / theirs if mine is not None and theirs else None


def method_stats(
    args: argparse.Namespace, study: str, targets: tuple[float, ...]
) -> dict[str, MethodStats]:
    """Every method of a study (its runs' group) with its numbers, in RUNS order."""
    groups = study_groups(args, study)
    records = {n: read_metrics(args.runs / n) for names in groups.values() for n in names}
    uniform_final = {str(RUNS[n].seed): records[n][-1]["test_acc"] for n in uniform_runs(groups)}

    def mean_to(names: list[str], t: float, fn: Any) -> tuple[float | None, int]:
        hits = [v for n in names if (v := fn(records[n], t)) is not None]
        return (_mean(hits) if hits else None), len(hits)

    stats = {}
    for prefix, names in groups.items():
        seeds = [str(RUNS[n].seed) for n in names]
        finals = [records[n][-1]["test_acc"] for n in names]
        noisy = [r["selected_noisy_frac"] for n in names for r in records[n]
                 if r.get("selected_noisy_frac") is not None]  # fmt: skip
        reach = {t: mean_to(names, t, epochs_to_target) for t in targets}
        stats[prefix] = MethodStats(
            label=label(RUNS[names[0]].overrides),
            method=RUNS[names[0]].method,
            seeds=seeds,
            epochs={t: e for t, (e, _) in reach.items()},
            reached={t: k for t, (_, k) in reach.items()},
            seconds={t: mean_to(names, t, seconds_to_target)[0] for t in targets},
            finals=finals,
            diffs=[
                f - uniform_final[sd]
                for f, sd in zip(finals, seeds, strict=True)
                if sd in uniform_final and RUNS[names[0]].method != "u"
            ],
            noisy=_mean(noisy) if noisy else None,
        )
    return stats


def _reference(stats: dict[str, MethodStats], letter: str) -> MethodStats | None:
    """uniform's ("u") or rho_loss's ("r") stats among a study's methods."""
    return next((m for m in stats.values() if m.method == letter), None)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def long_table(args: argparse.Namespace, study: str, targets: tuple[float, ...]) -> str:
    """Per method (mean over its seeds): epochs to each target and their ratio to uniform's and
    rho_loss's, training seconds to each target and their ratio to uniform's, the final
    accuracy and its difference to uniform's of the same seed (mean ± std over seeds)."""
    stats = method_stats(args, study, targets)
    u, r = _reference(stats, "u"), _reference(stats, "r")
    head = ["method", "seeds"]
    for t in targets:
        head += [f"epochs to {t:.0%}", "× uniform", "× rho_loss", f"s to {t:.0%}", "× uniform"]
    head += ["final acc", "final − uniform (same seed)", "noisy among selected"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in stats.values():
        cells = [m.label, ", ".join(m.seeds)]
        for t in targets:
            n = len(m.seeds)
            reach = "" if m.reached[t] == n else f" ({m.reached[t]}/{n})"
            cells.append("-" if m.epochs[t] is None else f"{m.epochs[t]:.1f}{reach}")
            cells += [_fmt(m.ratio(u, t), ".2f"), _fmt(m.ratio(r, t), ".2f")]
            cells += [_fmt(m.seconds[t], ".0f"), _fmt(m.ratio(u, t, "seconds"), ".2f")]
        cells.append(f"{100 * _mean(m.finals):.2f}%")
        cells.append(_pm(m.diffs, unit=" pts") if m.diffs else "-")
        cells.append("-" if m.noisy is None else f"{100 * m.noisy:.1f}%")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# The 20% study and the two others, by noise rate; the methods all three have, by name prefix.
RATES = {"noise0": 0.0, "hundred": 0.2, "noise40": 0.4}


def noise_rates(args: argparse.Namespace) -> tuple[str, dict[str, dict[float, MethodStats]]]:
    """uniform, rho_loss and bayesian with either predictor at 0%, 20% and 40% noise: final
    accuracy, its difference to uniform's, epochs and seconds to the rate's higher target
    (from uniform at that rate) relative to uniform's, and the noise among the selected."""
    head = "| noise | targets | method | seeds | final acc | final − uniform (same seed) |"
    head += (
        " epochs to the higher target (× uniform) | s to it (× uniform) | noisy among selected |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    by_method: dict[str, dict[float, MethodStats]] = {}
    for study, rate in RATES.items():
        targets = study_targets(args, study)
        if not uniform_runs(study_groups(args, study)):
            continue
        stats = method_stats(args, study, targets)
        u, high = _reference(stats, "u"), targets[-1]
        order = list(NOISE_METHODS)  # the same order of rows at every rate
        for prefix in sorted(
            (p for p in stats if stats[p].method in order),
            key=lambda p: order.index(stats[p].method),
        ):
            m = stats[prefix]
            by_method.setdefault(m.label, {})[rate] = m
            e, sec = m.epochs[high], m.seconds[high]
            n, k = len(m.seeds), m.reached[high]
            reach = "" if k == n else f", {k}/{n}"
            out.append(" | ".join([
                f"| {rate:.0%}", " / ".join(f"{t:.0%}" for t in targets), m.label,
                ", ".join(m.seeds), f"{100 * _mean(m.finals):.2f}%",
                _pm(m.diffs, unit=" pts") if m.diffs else "-",
                "never" if e is None else f"{e:.1f} ({_fmt(m.ratio(u, high), '.2f')}{reach})",
                "-" if sec is None else f"{sec:.0f} ({_fmt(m.ratio(u, high, 'seconds'), '.2f')})",
                "-" if m.noisy is None else f"{100 * m.noisy:.1f}%",
            ]) + " |")  # fmt: skip
    return "\n".join(out) + "\n", by_method


def noise_rates_plot(by_method: dict[str, dict[float, MethodStats]], path: Path) -> None:
    """Against the noise rate: final accuracy (mean ± std over seeds), final − uniform's, and
    the epochs to the rate's higher target relative to uniform's."""
    fig = Figure(figsize=(15, 4.2), dpi=120)
    left, right, speed = fig.subplots(1, 3)
    uniform = by_method.get("uniform", {})
    style = {"marker": "o", "capsize": 3}
    for i, (label_, per_rate) in enumerate(by_method.items()):
        color = f"C{i}"  # one color per method in every panel
        rates = sorted(per_rate)
        finals = [_mean_std(per_rate[r].finals) for r in rates]
        left.errorbar(
            [100 * r for r in rates], *zip(*finals, strict=True), label=label_, color=color, **style
        )
        rates = [r for r in rates if per_rate[r].diffs]  # uniform has no difference to itself
        if rates:
            diffs = [_mean_std(per_rate[r].diffs) for r in rates]
            right.errorbar(
                [100 * r for r in rates],
                *zip(*diffs, strict=True),
                label=label_,
                color=color,
                **style,
            )
        ratios = {r: m.ratio(uniform.get(r), max(m.epochs)) for r, m in per_rate.items()}
        rates = sorted(r for r, x in ratios.items() if x is not None)
        speed.plot([100 * r for r in rates], [ratios[r] for r in rates], "o-", color=color,
                   label=label_)  # fmt: skip
    right.axhline(0.0, color="black", lw=0.8)
    left.set(xlabel="label noise (%)", ylabel="final EMA test accuracy (%)",
             title="Final accuracy, mean ± std over seeds")  # fmt: skip
    right.set(xlabel="label noise (%)", ylabel="points",
              title="Final accuracy − uniform's (same seed)")  # fmt: skip
    speed.set(xlabel="label noise (%)", ylabel="× uniform's epochs", ylim=(0, None),
              title="Epochs to the rate's higher target")  # fmt: skip
    for ax in (left, right, speed):
        ax.set_xticks([0, 20, 40])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Fashion-MNIST, 100 epochs, 320 candidates → 32 selected")
    fig.tight_layout()
    fig.savefig(path)


def report(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for study in ("thirty", "hundred", *NOISE_STUDIES, "sharpen", "sharpen40", "ratio"):
        names = study_names(study)
        dirs = [args.runs / n for n in names if has_summary(args.runs / n)]
        if not dirs:
            continue
        targets = study_targets(args, study)
        make_report(dirs, targets=list(targets), out_dir=args.out / study)
        table = (args.out / study / "table.md").read_text()
        if study in LONG_STUDIES:
            table += "\n" + LONG_NOTE.format(*(f"{t:.0%}" for t in targets))
            table += "\n" + long_table(args, study, targets)
        sections.append((study, table, names))
        log(f"{study}: {len(dirs)} runs -> {args.out / study}")
    text = [
        "# Offline default: the demo setting with EMA evaluation and fitted predictors",
        "",
        f"`python experiments/offline_evidence.py` on {datetime.date.today()}; every run is",
        "`bdsel train --config fashion_mnist` with the overrides below, one process per core",
        "with one thread (2-core CPU). Test accuracy is the EMA of the weights with BN",
        "statistics recalibrated on 6,400 training images. Time to a target: training seconds",
        "at that epoch (selection included, evaluation excluded).",
        "",
        "| run | study | overrides |",
        "|---|---|---|",
    ]
    text += [f"| {n} | {r.study} | `{' '.join(r.overrides)}` |" for n, r in RUNS.items()]
    text += [
        "",
        "Also here: [predictor_budget.md](predictor_budget.md) (how long to fit the stand-in",
        "predictors), [crossfit_plateau/](crossfit_plateau/README.md) (the crossfit rows with",
        "the earlier plateau-fit crossfit models), [prefilter_partial/](prefilter_partial/README.md)",
        "(two stopped `select.prefilter` runs).",
    ]
    for study, table, names in sections:
        text += ["", f"## {study}", "", table]
        if study == "hundred":
            text += [hundred_comparison(args)]
        elif study in LONG_STUDIES:
            text += [uniform_flatness(args, study)]
        elif study not in LONG_STUDIES:
            text += ["Per run, relative to uniform of the same seed:", ""]
            text += [speedup_lines(args, [n for n in names if not n.startswith("u")])]
    rates, by_method = noise_rates(args)
    if len(by_method.get("uniform", {})) > 1:
        text += ["", "## By noise rate", "", NOISE_NOTE, "", rates]
        text += ["![Final accuracy against the noise rate](noise_rates.png)"]
        noise_rates_plot(by_method, args.out / "noise_rates.png")
    (args.out / "README.md").write_text("\n".join(text) + "\n")
    copy_records(args.runs, list(RUNS), args.out)  # the records behind every table
    summary = {n: read_summary(args.runs / n) for n in RUNS if has_summary(args.runs / n)}
    (args.out / "summaries.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    experiment_main(__doc__, "runs/exp", "docs/results/offline", run_missing, report)


if __name__ == "__main__":
    main()
