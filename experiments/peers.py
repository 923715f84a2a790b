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
import fnmatch
import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jobs import bdsel_executable, copy_records, experiment_main, log, run_pool

from bdsel.report import make_report
from bdsel.rundir import (
    first_reaching,
    has_summary,
    read_metrics,
    read_summary,
    uniform_targets,
)

STORED_DIR = Path(__file__).resolve().parents[1] / "docs" / "results" / "offline" / "runs"
BAYES = ("select.method=bayesian", "select.prefilter=1.0", "select.anneal=0")
LONG = ("train.epochs=100", "eval.every=4", "eval.other_weights=false")
FULL_DATA = ("select.n_candidates=128", "train.epochs=15", "eval.other_weights=false")
# The crossfit predictor these runs were made with: one round, the default until 2026-12-02
# (experiments/holdout_free.py measures the forward-corrected round that replaced it).
CROSSFIT = (
    "zeroshot.predictor=crossfit",
    "zeroshot.crossfit.rounds=1",
    "zeroshot.crossfit.epochs=10",
)


@dataclass(frozen=True)
class Arm:
    """A method as the tables name it: its overrides, the caches it reads, its stored runs."""

    key: str
    label: str
    overrides: tuple[str, ...] = ()
    reads_crossfit: bool = False  # zeroshot.cache = the crossfit cache of the run's data
    cleans: bool = False  # data.clean.cache = the same crossfit cache
    reads_holdout: bool = False  # the hold-out model's cache (one for every rate)
    stored: dict[float, str] = field(default_factory=dict)  # rate -> stored run name, {seed}


ARMS = [
    Arm("uniform", "uniform", ("select.method=uniform", *LONG)),
    Arm("full", "full-data (batch 128)", ("select.method=full", *FULL_DATA)),
    Arm("infobatch", "infobatch (batch 128)", ("select.method=infobatch", *FULL_DATA)),
    Arm("clean_full", "cleanlab → full-data", ("select.method=full", *FULL_DATA), cleans=True),
    Arm("clean_uniform", "cleanlab → uniform", ("select.method=uniform", *LONG), cleans=True),
    Arm("bayesian_holdout", "bayesian (holdout)", (*BAYES, *LONG), reads_holdout=True),
    Arm(
        "bayesian_crossfit", "bayesian (crossfit)", (*BAYES, *CROSSFIT, *LONG), reads_crossfit=True
    ),  # fmt: skip
    Arm(
        "clean_bayesian",
        "cleanlab → bayesian (crossfit)",
        (*BAYES, *CROSSFIT, *LONG),
        reads_crossfit=True,
        cleans=True,
    ),  # fmt: skip
    Arm(
        "bayesian_160",
        "bayesian (holdout), n_B = 160",
        (*BAYES, "select.n_candidates=160", *LONG),
        reads_holdout=True,
    ),  # fmt: skip
    # The 100-epoch runs of docs/results/offline/runs (2026-11-29, the same protocol on
    # another day's clock: their seconds compare with the stored uniform's only). The
    # crossfit ones at 0% were made with the plain temperature fit, which the noise fit
    # equals when it finds no noise.
    Arm("uniform_stored", "uniform", stored={0.0: "u100n0_s{}", 0.4: "u100n40_s{}"}),
    Arm(
        "bayesian_holdout_stored",
        "bayesian (holdout)",
        reads_holdout=True,
        stored={0.0: "b100n0_s{}", 0.4: "b100n40_s{}"},
    ),  # fmt: skip
    Arm(
        "bayesian_crossfit_stored",
        "bayesian (crossfit)",
        reads_crossfit=True,
        stored={0.0: "bcf100n0_s{}", 0.4: "bcfNn40_s{}"},
    ),  # fmt: skip
]
ARM = {a.key: a for a in ARMS}
NOISE = {0.0: ("data.noise.kind=none", "data.noise.rate=0.0"), 0.2: (),
         0.4: ("data.noise.rate=0.4",)}  # fmt: skip


@dataclass(frozen=True)
class Run:
    arm: Arm
    rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.key}-n{round(100 * self.rate)}-s{self.seed}"

    @property
    def stored(self) -> str | None:
        template = self.arm.stored.get(self.rate)
        return None if template is None else template.format(self.seed)

    def overrides(self) -> list[str]:
        return [f"seed={self.seed}", *NOISE[self.rate], *self.arm.overrides]


# (arm, rate, seeds), in the order the runs are made: every method at 20% first (the table
# the comparison rests on, all on one clock), then the peers at 0% and 40% beside the stored
# bayesian runs, then what more seeds and n_B = 160 add.
GRID: list[tuple[str, float, tuple[int, ...]]] = [
    ("uniform", 0.2, (0,)), ("full", 0.2, (0, 1, 2)), ("infobatch", 0.2, (0, 1, 2)),
    ("clean_full", 0.2, (0, 1, 2)), ("clean_uniform", 0.2, (0, 1, 2)), ("uniform", 0.2, (1, 2)),
    ("bayesian_holdout", 0.2, (0, 1)), ("bayesian_crossfit", 0.2, (0, 1)),
    ("clean_bayesian", 0.2, (0, 1)),
    *[(arm, rate, (0, 1)) for rate in (0.4, 0.0)
      for arm in ("uniform", "full", "infobatch", "clean_full", "clean_uniform")],
    ("bayesian_160", 0.2, (0, 1)), ("clean_bayesian", 0.4, (0, 1)),
    *[(arm, rate, (0, 1)) for rate in (0.0, 0.4)
      for arm in ("uniform_stored", "bayesian_holdout_stored", "bayesian_crossfit_stored")],
]  # fmt: skip
RUNS = [Run(ARM[arm], rate, seed) for arm, rate, seeds in GRID for seed in seeds]


def crossfit_cache(rate: float) -> Path:
    """The crossfit cache (seed 0's models serve every seed) of a noise rate's data."""
    from bdsel.config import load_config
    from bdsel.predict import default_cache_path

    return default_cache_path(load_config("fashion_mnist", ["seed=0", *NOISE[rate], *CROSSFIT]))


def run_dir(run: Run, runs: Path) -> Path:
    return STORED_DIR / run.stored if run.stored else runs / run.name


def command(run: Run, runs: Path) -> list[str]:
    values = run.overrides()
    if run.arm.reads_crossfit:
        values.append(f"zeroshot.cache={crossfit_cache(run.rate)}")
    if run.arm.cleans:
        values.append(f"data.clean.cache={crossfit_cache(run.rate)}")
    cmd = [
        bdsel_executable(),
        "train",
        "--config",
        "fashion_mnist",
        "--run-dir",
        str(runs / run.name),
    ]
    return [*cmd, "--overwrite", *(a for v in values for a in ("--set", v))]


CACHE_BASE = ["cache-zeroshot", "--config", "fashion_mnist", "--set", "seed=0"]


def holdout_cache() -> Path:
    """The hold-out model's cache: it learns clean labels, so one serves every rate."""
    from bdsel.config import load_config
    from bdsel.predict import default_cache_path

    return default_cache_path(load_config("fashion_mnist", ["seed=0"]))


def cache_jobs(todo: list[Run]) -> list[tuple[str, list[str]]]:
    """(log name, command) of the caches the runs to make read and that do not exist yet: the
    hold-out model's and each rate's crossfit cache (the log keeps the time it took)."""
    jobs = []
    if any(r.arm.reads_holdout for r in todo) and not holdout_cache().exists():
        jobs.append(("cache_holdout", [bdsel_executable(), *CACHE_BASE]))
    for rate in sorted({r.rate for r in todo if r.arm.reads_crossfit or r.arm.cleans}):
        if crossfit_cache(rate).exists():
            continue
        sets = [a for v in (*NOISE[rate], *CROSSFIT) for a in ("--set", v)]
        name = f"cache_crossfit_n{round(100 * rate)}"
        jobs.append((name, [bdsel_executable(), *CACHE_BASE, *sets]))
    return jobs


def selected(only: str) -> list[Run]:
    """The runs ``--only`` names (comma-separated names or patterns); all for an empty one."""
    patterns = only.split(",") if only else ["*"]
    names = [r.name for r in RUNS]
    unknown = [p for p in patterns if not fnmatch.filter(names, p)]
    if unknown:
        raise SystemExit(f"--only: no run is named {', '.join(unknown)}")
    return [r for r in RUNS if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


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
    from bdsel.config import load_config
    from bdsel.data import derive_run_data, load_dataset
    from bdsel.data.label_issues import find_label_issues

    config = load_config("fashion_mnist", ["seed=0", *NOISE[rate]])
    data = derive_run_data(load_dataset(config.data), config.data, config.seed)
    probs = load_zs_logprobs(crossfit_cache(rate), data.dataset)[data.train_idx].double().exp()
    import cleanlab.filter  # noqa: F401  (its import is not the cleaning's cost)

    t0 = time.perf_counter()
    find_label_issues(data.observed[data.train_idx], probs, config.data.clean.filter_by)
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
