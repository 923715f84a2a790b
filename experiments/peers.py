"""bdsel against what users would pick instead (docs/results/peers/): InfoBatch, cleaning the
labels with cleanlab before ordinary training, and plain full-data training, beside uniform
and bayesian selection, on Fashion-MNIST at 0%, 20% and 40% symmetric label noise.

The grid is data: ``ARMS`` (a method as the tables name it, with its overrides) times the
noise rates and seeds of ``GRID``. Uniform and bayesian (holdout, crossfit) are the 100-epoch
runs stored in docs/results/offline/runs/ (``STORED``), made with the same protocol (one
process per core with one thread on this 2-core CPU); ``uniform (fresh)`` reruns one of them
beside the new runs so that the two clocks can be compared. Every other run is a plain
``bdsel train --config fashion_mnist`` under ``--runs`` (a finished one is never rerun).

- full-data: every training point every epoch, batches of 128 (InfoBatch's own CIFAR batch
  size and the reference its claim is made against), no selection, 15 epochs.
- infobatch: ``select.method=infobatch``, the same batches and epochs (prune_ratio 0.5,
  delta 0.875, InfoBatch's defaults).
- cleanlab → X: ``data.clean.cache`` = the crossfit cache of the same data (out-of-fold
  probabilities, no clean label seen), cleanlab's default ``filter_by``; then X on what is left.
- bayesian, n_B = 160: the README's CPU setting (half the candidates), 100 epochs.

Targets come from the stored uniform runs of each rate, as RHO-LOSS chose them. One-time
costs: the seconds of each cache command this script ran (its log under --runs/logs), and
the cleanlab call, timed here.

    python experiments/peers.py                  # run what is missing, then report
    python experiments/peers.py --phase report   # tables and plots from the runs
    python experiments/peers.py --only 'infobatch-*'
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jobs import copy_records, experiment_main, log, run_pool
from peers_grid import (
    ARMS,
    NOISE,
    RUNS,
    Arm,
    cache_jobs,
    command,
    crossfit_cache,
    run_dir,
    selected,
)

from bdsel.report import make_report
from bdsel.rundir import has_summary, read_metrics, read_summary
from bdsel.targets import first_reaching, uniform_targets


def run_missing(args: argparse.Namespace) -> None:
    skip = set(args.skip.split(",")) if args.skip else set()
    todo = [r for r in selected(args.only) if not has_summary(run_dir(r, args.runs))]
    todo = [r for r in todo if r.name not in skip]
    run_pool(cache_jobs(todo), args.runs, args.jobs)
    run_pool([(r.name, command(r, args.runs)) for r in todo], args.runs, args.jobs)


# ----------------------------------------------------------------------------- report

# The command's summary table row (its label may wrap): "time (fitting the predictor ... 185.1s"
CACHE_TIME = re.compile(r"time \(fitting the predictor[^\n]*?([0-9]+\.[0-9]+)s")


def logged_cache_seconds(log: Path) -> float | None:
    """The seconds a cache command's log says it took (fitting included); None if none."""
    m = CACHE_TIME.search(log.read_text(errors="replace"))
    return float(m.group(1)) if m else None


def cache_seconds(runs: Path) -> dict[str, float]:
    """Seconds of each cache command, as its log under <runs>/logs says (the command prints
    the time, fitting included); a cache made elsewhere has none."""
    out = {}
    for path in sorted((runs / "logs").glob("cache_*.txt")):
        if (seconds := logged_cache_seconds(path)) is not None:
            out[path.stem.removeprefix("cache_")] = seconds
    return out


def cleaning_seconds(rate: float) -> float:
    """Wall-clock of the cleanlab call on a rate's crossfit cache (what a cleaned run adds)."""
    from bdsel.cache.format import load_zs_logprobs
    from bdsel.configure import load_config
    from bdsel.data import derive_run_data, load_dataset
    from bdsel.data.label_issues import find_label_issues

    config = load_config("fashion_mnist", ["seed=0", *NOISE[rate]])
    data = derive_run_data(
        load_dataset(config.data), config.data, config.seed, config.holdout_fraction
    )
    probs = load_zs_logprobs(crossfit_cache(rate), data.dataset)[data.train_idx].double().exp()
    import cleanlab.filter  # noqa: F401  (its import is not the cleaning's cost)

    t0 = time.perf_counter()
    find_label_issues(data.observed[data.train_idx], probs)
    return time.perf_counter() - t0


def one_time(arm: Arm, rate: float, caches: dict[str, float], cleaning: dict[float, float]) -> str:
    parts = []
    if arm.reads_holdout:
        parts.append(("holdout cache", caches.get("holdout")))
    if arm.reads_crossfit or arm.cleans:
        parts.append(("crossfit cache", caches.get(f"crossfit_n{round(100 * rate)}")))
    if arm.cleans:
        parts.append(("cleanlab", cleaning.get(rate)))
    return " + ".join(f"{name} {_seconds(s)}" for name, s in parts) or "-"


def _seconds(s: float | None) -> str:
    return "?" if s is None else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _reach(
    records: list[list[dict[str, Any]]], target: float, key: str
) -> tuple[float | None, int]:
    """Mean of ``key`` at the first evaluation reaching ``target``, over the runs that reach it."""
    hits = [
        r[key] for rs in records if (r := first_reaching(rs, target)) and r.get(key) is not None
    ]
    return (_mean(hits) if hits else None), len(hits)


@dataclass
class Row:
    label: str
    stored: bool  # the stored runs' clock (their uniform is their reference)
    seeds: list[int]
    finals: list[float]
    diffs: list[float]
    samples: dict[float, tuple[float | None, int]]
    seconds: dict[float, tuple[float | None, int]]
    noisy: float | None
    cleaning: dict[str, Any] | None
    cost: str


def rows(runs: Path, rate: float, targets: list[float], caches: dict, cleaning: dict) -> list[Row]:
    done = [r for r in RUNS if r.rate == rate and has_summary(run_dir(r, runs))]
    uniform = {(bool(r.stored), r.seed): read_metrics(run_dir(r, runs))[-1]["test_acc"]
               for r in done if r.arm.key in ("uniform", "uniform_stored")}  # fmt: skip
    out = []
    for arm in ARMS:
        mine = [r for r in done if r.arm is arm]
        if not mine:
            continue
        records = [read_metrics(run_dir(r, runs)) for r in mine]
        finals = [rs[-1]["test_acc"] for rs in records]
        noisy = [x["selected_noisy_frac"] for rs in records for x in rs
                 if x.get("selected_noisy_frac") is not None]  # fmt: skip
        summary = read_summary(run_dir(mine[0], runs))
        stored = bool(arm.stored)
        out.append(Row(
            label=arm.label + (" (stored)" if stored else ""),
            stored=stored,
            seeds=[r.seed for r in mine],
            finals=finals,
            diffs=[f - uniform[stored, r.seed] for f, r in zip(finals, mine, strict=True)
                   if (stored, r.seed) in uniform and not arm.key.startswith("uniform")],
            samples={t: _reach(records, t, "samples_seen") for t in targets},
            seconds={t: _reach(records, t, "wall_s") for t in targets},
            noisy=_mean(noisy) if noisy else None,
            cleaning=summary.get("cleaning"),
            cost=one_time(arm, rate, caches, cleaning),
        ))  # fmt: skip
    return out


def _pm(xs: list[float], unit: str = "%") -> str:
    mean = 100 * _mean(xs)
    std = f" ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{mean:.2f}{std}{unit}" if unit == "%" else f"{mean:+.2f}{std}{unit}"


def _to(value: tuple[float | None, int], n: int, ref: float | None, fmt: str) -> str:
    mean, k = value
    if mean is None:
        return "never"
    reach = "" if k == n else f" ({k}/{n})"
    ratio = f" ({mean / ref:.2f}×)" if ref else ""
    return f"{format(mean, fmt)}{ratio}{reach}"


def table(rows_: list[Row], targets: list[float]) -> str:
    head = ["method", "seeds", "final EMA acc", "− uniform (same seed)"]
    head += [f"samples to {t:.0%}" for t in targets] + [f"s to {t:.0%}" for t in targets]
    head += ["mislabeled among trained", "one-time cost"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows_:
        ref = next(
            (u for u in rows_ if u.label.startswith("uniform") and u.stored == r.stored), None
        )
        n = len(r.seeds)
        cells = [r.label, ", ".join(map(str, r.seeds)), _pm(r.finals),
                 _pm(r.diffs, " pts") if r.diffs else "-"]  # fmt: skip
        for t in targets:
            cells.append(_to(r.samples[t], n, ref and ref.samples[t][0], ",.0f"))
        for t in targets:
            cells.append(_to(r.seconds[t], n, ref and ref.seconds[t][0], ".0f"))
        cells.append("-" if r.noisy is None else f"{100 * r.noisy:.1f}%")
        cells.append(r.cost)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def cleaning_table(rows_: list[Row]) -> str:
    cleaned = [r for r in rows_ if r.cleaning]
    if not cleaned:
        return ""
    c = cleaned[0].cleaning
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    return (
        f"cleanlab (`filter_by={c['filter_by']}`) on the crossfit cache flags {c['n_flagged']:,}"
        f" of {c['n_points']:,} training points ({c['n_mislabeled']:,} mislabeled): precision"
        f" {pct(c['precision'])}, recall {pct(c['recall'])}; {pct(c['mislabeled_left'])} of"
        " the points left are mislabeled.\n"
    )


NOTE = (
    "Targets from this rate's uniform runs (RHO-LOSS's rule: their mean final accuracy rounded"
    " down, and 5 points under it). samples: gradient samples (points trained on, all epochs)"
    " at the first evaluation at or above the target; s: training seconds there (selection"
    " included, evaluation excluded); both the mean over the seeds that reached it (k/n when"
    " some did not), × uniform's in parentheses. final EMA acc: mean ± std over seeds;"
    " − uniform: against uniform's run of the same seed. (stored): the 100-epoch runs of"
    " docs/results/offline/runs/, the same protocol on another day, whose clock ran slower:"
    " their seconds and differences are against the stored uniform runs. mislabeled among"
    " trained: mean over evaluations and seeds. One-time cost: what the run needs before it"
    " trains, measured once (a cache serves every seed)."
)


def report(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    caches = cache_seconds(args.runs)
    text = ["# bdsel against its peers: InfoBatch, clean-then-train, full-data training", ""]
    text += [
        f"`python experiments/peers.py` on {datetime.date.today()}, commit {_commit()}: every run is",
        "`bdsel train --config fashion_mnist` with the overrides below, one process per core with",
        f"one thread ({os.cpu_count()}-core CPU; torch {torch.__version__}). Test accuracy: the weight EMA with",
        "recalibrated BN statistics. The runs and their overrides:",
        "",
    ]
    text += ["| run | overrides |", "|---|---|"]
    for r in RUNS:
        if has_summary(run_dir(r, args.runs)):
            where = f"stored: `{r.stored}`" if r.stored else "`" + " ".join(r.overrides()) + "`"
            text.append(f"| {r.name} | {where} |")
    for rate in NOISE:
        done = [r for r in RUNS if r.rate == rate and has_summary(run_dir(r, args.runs))]
        uniform = [read_metrics(run_dir(r, args.runs))[-1]["test_acc"] for r in done
                   if r.arm.key == "uniform"]  # fmt: skip
        if not uniform:
            continue
        targets = uniform_targets(uniform)
        cleaning = {rate: cleaning_seconds(rate)} if any(r.arm.cleans for r in done) else {}
        rows_ = rows(args.runs, rate, targets, caches, cleaning)
        sub = args.out / f"noise{round(100 * rate)}"
        fresh = [run_dir(r, args.runs) for r in done if not r.stored]  # one clock in the plots
        make_report(fresh, targets=targets, out_dir=sub)
        text += ["", f"## {rate:.0%} symmetric noise", "", table(rows_, targets), NOTE, ""]
        text += [
            cleaning_table(rows_),
            f"Curves and the full report: [{sub.name}/]({sub.name}/report.html)",
        ]
        text += ["", f"![accuracy against training time]({sub.name}/accuracy_vs_time.png)"]
        log(f"{rate:.0%}: {len(done)} runs -> {sub}")
    (args.out / "README.md").write_text("\n".join(text) + "\n")
    # the records behind the tables (the stored runs are already in the repo)
    copy_records(args.runs, [r.name for r in RUNS if not r.stored], args.out)
    (args.out / "caches.json").write_text(json.dumps(caches, indent=1) + "\n")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    experiment_main(__doc__, "runs/peers", "docs/results/peers", run_missing, report)


if __name__ == "__main__":
    main()
