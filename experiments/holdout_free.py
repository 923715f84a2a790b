"""Bayesian selection without a clean hold-out set (docs/results/holdout_free/): the crossfit
predictor against the hold-out one, at 20% and 40% symmetric and 30% pairflip label noise,
100 epochs, beside uniform and cleaning-then-training on the same crossfit cache.

The grid is data: ``ARMS`` (a method, its overrides, the cache it reads) times the noise
``SETTINGS`` and seeds of ``GRID``. A run already made elsewhere with the same overrides (the
peers' runs of docs/results/peers/runs/, the 100-epoch runs of docs/results/offline/runs/) is
read from there (``STORED``) instead of being rerun; everything else is a plain
``bdsel train --config fashion_mnist`` under ``--runs``, one process per core with one thread.

- bayesian (crossfit, shipped): the shipped crossfit default: a channel round (one fold's
  model, 8 epochs) whose out-of-fold probabilities estimate the noise channel, anchor points
  or their symmetric projection as ``channel: auto`` chooses, then K = 2 models of 18 epochs
  trained through it (``zeroshot.crossfit.refit=forward``).
- bayesian (crossfit, channel round's model continued; 16-epoch models; 3-epoch channel
  round, fitted rate): three cheaper caches than the shipped one, measured against it
  (``refit_init=continue``: 36 model-epochs; ``epochs=16``: 40; ``channel_epochs=3
  channel=fitted``: 39; the shipped default's 44).
- bayesian (crossfit, forward round, anchor channel): the default before, two rounds of K = 2
  models of 10 epochs, the second through the anchor-point channel, pinned by its overrides.
- bayesian (crossfit, one round): ``zeroshot.crossfit.rounds=1``, 10 epochs, the default
  before that.
- bayesian (crossfit, refit round): ``rounds=2 refit=trusted``, the second round refits the
  fold models on the points cleanlab trusts from the first round's out-of-fold probabilities.
- cleanlab → X: ``data.clean.cache`` = a crossfit cache of the same data (one round, the
  forward round, or the shipped default, as the arm's label says), then X; bayesian (holdout)
  on the data the shipped cache cleaned tells whether what selection does with the points
  cleaning missed comes from scoring with the cache that missed them.

The report: per setting, the table (final EMA accuracy, against uniform and against bayesian
(holdout) of the same seed, samples and seconds to the targets, the mislabeled share among
the trained points and in the data drawn from), curves, and what the predictors say about the
mislabeled points (``predictor_noise.py``'s quantiles and AUROC) with each cache's seconds.

    python experiments/holdout_free.py                  # run what is missing, then report
    python experiments/holdout_free.py --phase report
    python experiments/holdout_free.py --only 'bayesian_crossfit_r2-p30-*'
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jobs import bdsel_executable, copy_records, experiment_main, log, run_pool
from peers import cache_seconds
from predictor_noise import QUANTILES, label_logprobs, summarize

from bdsel.report import make_report
from bdsel.rundir import has_summary, read_metrics, read_summary
from bdsel.targets import first_reaching, uniform_targets

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
BAYES = ("select.method=bayesian", "select.prefilter=1.0", "select.anneal=0")
RHO = ("select.method=rho_loss", "select.prefilter=1.0")
LONG = ("train.epochs=100", "eval.every=4", "eval.other_weights=false")
CROSSFIT = ("zeroshot.predictor=crossfit",)  # the shipped defaults
# The channel round's fold model goes on through the channel (8 + 10 epochs) instead of a
# fresh one's 18: 36 model-epochs against 44.
CONTINUE = (*CROSSFIT, "zeroshot.crossfit.refit_init=continue")
E16 = (*CROSSFIT, "zeroshot.crossfit.epochs=16")  # 1 × 8 + 2 × 16 = 40 model-epochs
# A 3-epoch channel round (1 × 3 + 2 × 18 = 39 model-epochs), its symmetric channel's rate
# fitted by likelihood: after 3 epochs the anchor diagonal counts many more of the model's
# own confusions as noise than after 8 (experiments/channel_round.py).
C3 = (*CROSSFIT, "zeroshot.crossfit.channel_epochs=3", "zeroshot.crossfit.channel=fitted")
# Fold models refit on the points the shipped cache's cleaning keeps (its cache needs that
# cleaning's: predictor_overrides).
CLEANED = (*CROSSFIT, "zeroshot.crossfit.cleaned=true")
# The earlier defaults, pinned: 10 epochs, and a forward refit's first round all of whose
# K models train as long as the second's and estimate the anchor-point channel.
EARLIER = (*CROSSFIT, "zeroshot.crossfit.epochs=10")
ONE_ROUND = (*EARLIER, "zeroshot.crossfit.rounds=1")
REFIT = (*EARLIER, "zeroshot.crossfit.rounds=2", "zeroshot.crossfit.refit=trusted")
FORWARD = (*EARLIER, "zeroshot.crossfit.rounds=2", "zeroshot.crossfit.refit=forward",
           "zeroshot.crossfit.channel_folds=2", "zeroshot.crossfit.channel_epochs=10",
           "zeroshot.crossfit.channel=anchor")  # fmt: skip

# name -> (what the tables call it, its data overrides)
SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "n20": ("20% symmetric noise", ()),
    "n40": ("40% symmetric noise", ("data.noise.rate=0.4",)),
    "p30": ("30% pairflip noise", ("data.noise.kind=pairflip", "data.noise.rate=0.3")),
}


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    overrides: tuple[str, ...] = ()
    cache: tuple[str, ...] | None = None  # zeroshot.cache: the cache these overrides make
    # data.clean.cache: the crossfit cache of the same data these predictor overrides make
    cleans: tuple[str, ...] | None = None
    stored: dict[str, str] = field(default_factory=dict)  # setting -> run directory, {seed}


PEERS, OFFLINE = "peers/runs/", "offline/runs/"
KEPT = RESULTS / "holdout_free" / "runs"  # this study's records of runs of earlier sessions
ARMS = [
    Arm("uniform", "uniform", ("select.method=uniform", *LONG),
        stored={"n20": PEERS + "uniform-n20-s{}", "n40": PEERS + "uniform-n40-s{}"}),
    Arm("bayesian_holdout", "bayesian (holdout)", (*BAYES, *LONG), cache=(),
        stored={"n20": PEERS + "bayesian_holdout-n20-s{}", "n40": OFFLINE + "b100n40_s{}"}),
    Arm("bayesian_crossfit_auto", "bayesian (crossfit, shipped: channel round, auto channel)",
        (*BAYES, *CROSSFIT, *LONG), cache=CROSSFIT),
    Arm("bayesian_crossfit_cont", "bayesian (crossfit, channel round's model continued)",
        (*BAYES, *CONTINUE, *LONG), cache=CONTINUE),
    Arm("bayesian_crossfit_e16", "bayesian (crossfit, 16-epoch models)",
        (*BAYES, *E16, *LONG), cache=E16),
    Arm("bayesian_crossfit_c3", "bayesian (crossfit, 3-epoch channel round, fitted rate)",
        (*BAYES, *C3, *LONG), cache=C3),
    Arm("bayesian_crossfit_fwd", "bayesian (crossfit, forward round, anchor channel)",
        (*BAYES, *FORWARD, *LONG), cache=FORWARD),
    Arm("bayesian_crossfit", "bayesian (crossfit, one round)", (*BAYES, *ONE_ROUND, *LONG),
        cache=ONE_ROUND, stored={"n20": PEERS + "bayesian_crossfit-n20-s{}",
                                 "n40": OFFLINE + "bcfNn40_s{}"}),
    Arm("bayesian_crossfit_r2", "bayesian (crossfit, refit round)", (*BAYES, *REFIT, *LONG),
        cache=REFIT),
    Arm("clean_uniform", "cleanlab (one round) → uniform", ("select.method=uniform", *LONG),
        cleans=ONE_ROUND,
        stored={"n20": PEERS + "clean_uniform-n20-s{}", "n40": PEERS + "clean_uniform-n40-s{}"}),
    Arm("clean_bayesian", "cleanlab → bayesian (crossfit, one round)", (*BAYES, *ONE_ROUND, *LONG),
        cache=ONE_ROUND, cleans=ONE_ROUND, stored={"n20": PEERS + "clean_bayesian-n20-s{}"}),
    Arm("clean_uniform_fwd", "cleanlab (crossfit, forward round) → uniform",
        ("select.method=uniform", *LONG), cleans=FORWARD),
    Arm("clean_bayesian_fwd", "cleanlab (crossfit, forward round) → bayesian (same crossfit)",
        (*BAYES, *FORWARD, *LONG), cache=FORWARD, cleans=FORWARD),
    Arm("clean_uniform_auto", "cleanlab (crossfit, shipped) → uniform",
        ("select.method=uniform", *LONG), cleans=CROSSFIT),
    Arm("clean_bayesian_auto", "cleanlab (crossfit, shipped) → bayesian (same crossfit)",
        (*BAYES, *CROSSFIT, *LONG), cache=CROSSFIT, cleans=CROSSFIT),
    Arm("clean_bayesian_holdout_auto", "cleanlab (crossfit, shipped) → bayesian (holdout)",
        (*BAYES, *LONG), cache=(), cleans=CROSSFIT),
    Arm("clean_bayesian_recache",
        "cleanlab (crossfit, shipped) → bayesian (crossfit models of the cleaned points)",
        (*BAYES, *CLEANED, *LONG), cache=CLEANED, cleans=CROSSFIT),
    Arm("rho_loss_holdout", "rho_loss (holdout)", (*RHO, *LONG), cache=(),
        stored={"n40": OFFLINE + "r100n40_s{}"}),
    Arm("rho_loss_crossfit_fwd", "rho_loss (crossfit, forward round)", (*RHO, *FORWARD, *LONG),
        cache=FORWARD),
    Arm("rho_loss_crossfit_auto", "rho_loss (crossfit, shipped)", (*RHO, *CROSSFIT, *LONG),
        cache=CROSSFIT),
]  # fmt: skip
ARM = {a.key: a for a in ARMS}


@dataclass(frozen=True)
class Run:
    arm: Arm
    setting: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.key}-{self.setting}-s{self.seed}"

    @property
    def stored(self) -> Path | None:
        """The same run made for another study, when there is one."""
        template = self.arm.stored.get(self.setting)
        path = RESULTS / template.format(self.seed) if template else None
        return path if path is not None and has_summary(path) else None

    def overrides(self) -> list[str]:
        return [f"seed={self.seed}", *SETTINGS[self.setting][1], *self.arm.overrides]


# In the order they are made (runs read from another study are simply found done): what the
# done-when needs first (every setting's bayesian crossfit and hold-out runs), then the refit
# round, then cleaning.
GRID: list[tuple[str, str, tuple[int, ...]]] = [
    ("bayesian_holdout", "p30", (0, 1)), ("bayesian_holdout", "n20", (0, 1, 2)),
    ("uniform", "p30", (0, 1)), ("uniform", "n20", (0, 1, 2)), ("uniform", "n40", (0, 1)),
    ("bayesian_holdout", "n40", (0, 1)),
    ("bayesian_crossfit", "p30", (0, 1)), ("bayesian_crossfit", "n20", (0, 1)),
    ("bayesian_crossfit", "n40", (0, 1)),
    *[("bayesian_crossfit_r2", s, (seed,)) for seed in (0, 1) for s in ("n20", "n40", "p30")],
    *[("bayesian_crossfit_fwd", s, (seed,)) for seed in (0, 1) for s in ("n40", "p30", "n20")],
    ("bayesian_crossfit_fwd", "n20", (2,)),
    ("clean_uniform", "p30", (0,)), ("clean_uniform", "n20", (0, 1)),
    ("clean_uniform", "n40", (0, 1)), ("clean_bayesian", "n20", (0, 1)),
    ("clean_bayesian", "p30", (0,)), ("clean_bayesian", "n40", (0,)),
    *[("clean_uniform_fwd", s, (0, 1)) for s in ("n40", "n20", "p30")],
    ("clean_bayesian_fwd", "n40", (0,)), ("clean_bayesian_fwd", "p30", (0,)),
    ("rho_loss_holdout", "n40", (0, 1)), ("rho_loss_crossfit_fwd", "n40", (0, 1)),
    *[("bayesian_crossfit_auto", s, (0, 1)) for s in ("n40", "p30", "n20")],
    ("bayesian_crossfit_auto", "n20", (2,)),
    ("bayesian_holdout", "n40", (2,)), ("uniform", "n40", (2,)),
    ("bayesian_crossfit_auto", "n40", (2,)),
    *[("clean_uniform_auto", s, (0, 1)) for s in ("n40", "p30", "n20")],
    ("clean_bayesian_auto", "n40", (0,)), ("clean_bayesian_auto", "p30", (0,)),
    ("clean_bayesian_holdout_auto", "p30", (0,)), ("clean_bayesian_holdout_auto", "n40", (0,)),
    ("rho_loss_crossfit_auto", "n40", (0, 1)),
    # Two cheaper caches, stopped where they fell short of the shipped one (predictors.md).
    ("bayesian_crossfit_cont", "n40", (0,)), ("bayesian_crossfit_cont", "p30", (0,)),
    ("bayesian_crossfit_e16", "n40", (0, 1)), ("bayesian_crossfit_e16", "p30", (0, 1)),
    ("bayesian_crossfit_e16", "n20", (0,)),
    ("bayesian_crossfit_c3", "n40", (0,)), ("bayesian_crossfit_c3", "p30", (0,)),
    ("clean_bayesian_recache", "n40", (0,)), ("clean_bayesian_recache", "p30", (0,)),
]  # fmt: skip
RUNS = [Run(ARM[arm], setting, seed) for arm, setting, seeds in GRID for seed in seeds]


def predictor_overrides(setting: str, predictor: tuple[str, ...]) -> list[str]:
    """What makes a predictor's cache for a setting's data (seed 0's serves every seed: the
    crossfit models' split and labels do not depend on the run's seed); models of the cleaned
    points also name the shipped cache that cleans them."""
    cleaned = [f"data.clean.cache={cache_path(setting, CROSSFIT)}"] if predictor == CLEANED else []
    return ["seed=0", *SETTINGS[setting][1], *predictor, *cleaned]


def cache_path(setting: str, predictor: tuple[str, ...]) -> Path:
    """The cache a predictor's overrides make for a setting's data."""
    from bdsel.config import load_config
    from bdsel.predict import default_cache_path

    return default_cache_path(load_config("fashion_mnist", predictor_overrides(setting, predictor)))


def run_dir(run: Run, runs: Path) -> Path:
    """A stored run's directory, else the run under ``runs``, else this study's record of it
    from an earlier session (docs/results/holdout_free/runs/: config, metrics, summary)."""
    here, kept = runs / run.name, KEPT / run.name
    return run.stored or (kept if not has_summary(here) and has_summary(kept) else here)


def command(run: Run, runs: Path) -> list[str]:
    values = run.overrides()
    if run.arm.cache:  # the hold-out cache is the default path already; a crossfit one is
        values.append(f"zeroshot.cache={cache_path(run.setting, run.arm.cache)}")  # seed 0's
    if run.arm.cleans:
        values.append(f"data.clean.cache={cache_path(run.setting, run.arm.cleans)}")
    cmd = [bdsel_executable(), "train", "--config", "fashion_mnist", "--run-dir"]
    return [*cmd, str(runs / run.name), "--overwrite", *(a for v in values for a in ("--set", v))]


CACHES = {"holdout": (), "crossfit_auto": CROSSFIT, "crossfit_cont": CONTINUE, "crossfit_e16": E16,
          "crossfit_c3": C3, "crossfit_cleaned": CLEANED,
          "crossfit_fwd": FORWARD, "crossfit": ONE_ROUND, "crossfit_r2": REFIT}  # fmt: skip


def cache_jobs(todo: list[Run]) -> list[tuple[str, list[str]]]:
    """(log name, command) of the caches the runs to make read and that do not exist yet (the
    log keeps the time each took); the hold-out model's serves every setting."""
    needed: dict[str, tuple[str, ...]] = {}
    for r in todo:
        for predictor in (r.arm.cache, r.arm.cleans):  # the cache it reads, the one it cleans by
            if predictor is not None:
                key = next(k for k, v in CACHES.items() if v == predictor)
                needed["holdout" if key == "holdout" else f"{key}_{r.setting}"] = predictor
    jobs = []
    for name, predictor in needed.items():
        setting = "n20" if name == "holdout" else name.rsplit("_", 1)[1]
        if cache_path(setting, predictor).exists():
            continue
        sets = [a for v in predictor_overrides(setting, predictor) for a in ("--set", v)]
        jobs.append((f"cache_{name}", [bdsel_executable(), "cache-zeroshot", "--config",
                                       "fashion_mnist", *sets]))  # fmt: skip
    return jobs


def selected(only: str) -> list[Run]:
    patterns = only.split(",") if only else ["*"]
    names = [r.name for r in RUNS]
    if unknown := [p for p in patterns if not fnmatch.filter(names, p)]:
        raise SystemExit(f"--only: no run is named {', '.join(unknown)}")
    return [r for r in RUNS if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


def run_missing(args: argparse.Namespace) -> None:
    skip = set(args.skip.split(",")) if args.skip else set()
    todo = [r for r in selected(args.only) if not has_summary(run_dir(r, args.runs))]
    todo = [r for r in todo if r.name not in skip]
    caches = cache_jobs(todo)
    # A cache whose command cleans by another cache (data.clean.cache) after the ones that do
    # not: the cache it cleans by is one of those.
    for wave in (False, True):
        jobs = [j for j in caches if any(a.startswith("data.clean.cache=") for a in j[1]) == wave]
        run_pool(jobs, args.runs, args.jobs)
    run_pool([(r.name, command(r, args.runs)) for r in todo], args.runs, args.jobs)


# ----------------------------------------------------------------------------- report


def _pm(xs: list[float], signed: bool = False) -> str:
    if not xs:
        return "-"
    mean = 100 * statistics.fmean(xs)
    std = f" ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{mean:+.2f}{std} pts" if signed else f"{mean:.2f}{std}%"


SESSIONS = "sessions.json"  # in KEPT: run name -> when the report that kept its record ran


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object this study keeps beside its report, {} before the first report."""
    return json.loads(path.read_text()) if path.exists() else {}


def _clock(path: Path, sessions: dict[str, str]) -> str:
    if not path.is_relative_to(RESULTS):
        return ""
    place = path.relative_to(RESULTS).parts[0] + "/"
    if path.parent == KEPT.resolve():  # unknown: a clock of its own, compared with nothing
        return place + sessions.get(path.name, f"unknown {path.name}")
    return place


def keep_records(runs: Path, out: Path) -> None:
    """Copy the records of this session's runs to <out>/runs/ and note when (a record kept
    before keeps its first note: the session that made the run)."""
    names = [r.name for r in RUNS if not r.stored and has_summary(runs / r.name)]
    copy_records(runs, names, out)
    path = out / "runs" / SESSIONS
    sessions = _read_json(path)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sessions |= {n: now for n in names if n not in sessions}
    path.write_text(json.dumps(sessions, indent=1, sort_keys=True) + "\n")


@dataclass
class Result:
    """One arm's runs at one setting, as the table reads them."""

    arm: Arm
    runs: list[Run]
    records: list[list[dict[str, Any]]]
    dirs: list[Path] = field(default_factory=list)  # where each run's records were read

    @property
    def finals(self) -> dict[int, float]:
        return {r.seed: rs[-1]["test_acc"] for r, rs in zip(self.runs, self.records, strict=True)}

    def reach(self, target: float, key: str) -> tuple[float | None, int]:
        hits = [x[key] for rs in self.records if (x := first_reaching(rs, target))]
        return (statistics.fmean(hits) if hits else None), len(hits)

    @cached_property
    def clocks(self) -> set[str]:
        """Where its runs were made: "offline/", "peers/" (each one session), "holdout_free/"
        plus the session that kept the record (``SESSIONS``: this study's records come from
        several) or "" (under ``--runs``: this session)."""
        sessions = _read_json(KEPT / SESSIONS)
        places = [d.resolve() for d in self.dirs]
        return {_clock(p, sessions) for p in places}

    def mislabeled(self, key: str) -> float | None:
        xs = [x[key] for rs in self.records for x in rs if x.get(key) is not None]
        return statistics.fmean(xs) if xs else None


def results(setting: str, runs: Path) -> dict[str, Result]:
    out = {}
    for arm in ARMS:
        mine = [r for r in RUNS if r.arm is arm and r.setting == setting]
        mine = [r for r in mine if has_summary(run_dir(r, runs))]
        if mine:
            dirs = [run_dir(r, runs) for r in mine]
            out[arm.key] = Result(arm, mine, [read_metrics(d) for d in dirs], dirs)
    return out


def _against(res: Result, ref: Result | None) -> str:
    if ref is None or res is ref:
        return "-"
    return _pm([f - ref.finals[s] for s, f in res.finals.items() if s in ref.finals], True)


def _to(value: tuple[float | None, int], n: int, ref: float | None, fmt: str) -> str:
    mean, k = value
    if mean is None:
        return "never"
    ratio = f" ({mean / ref:.2f}×)" if ref else ""
    return f"{format(mean, fmt)}{ratio}" + ("" if k == n else f" ({k}/{n})")


def table(res: dict[str, Result], targets: list[float]) -> str:
    head = ["method", "seeds", "final EMA acc", "− uniform", "− bayesian (holdout)"]
    head += [f"samples to {t:.0%}" for t in targets] + [f"s to {t:.0%}" for t in targets]
    head += ["mislabeled among trained", "in the data drawn from"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    uniform, holdout = res.get("uniform"), res.get("bayesian_holdout")
    for r in res.values():
        n = len(r.runs)
        cells = [r.arm.label, ", ".join(str(x.seed) for x in r.runs),
                 _pm(list(r.finals.values())), _against(r, uniform), _against(r, holdout)]  # fmt: skip
        for key, fmt in (("samples_seen", ",.0f"), ("wall_s", ".0f")):
            for t in targets:
                if key == "wall_s" and uniform and r.clocks != uniform.clocks:
                    cells.append("(other clock)")
                    continue
                ref = uniform.reach(t, key)[0] if uniform else None
                cells.append(_to(r.reach(t, key), n, ref, fmt))
        for key in ("selected_noisy_frac", "base_noisy_frac"):
            share = r.mislabeled(key)
            cells.append("-" if share is None else f"{100 * share:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


NOTE = (
    "Final EMA acc: the last evaluation's (epoch 100), mean ± std over seeds; − uniform, −"
    " bayesian (holdout): against that method's run of the same seed. Targets from uniform's"
    " runs (RHO-LOSS's rule); samples: gradient samples at the first evaluation at or above the"
    " target, s: training seconds there (selection included, evaluation excluded), × uniform's."
    " Mislabeled among trained: the share of mislabeled points among those trained on, mean"
    " over evaluations and seeds; in the data drawn from: the same share in the training"
    " subset the method draws from (after cleaning, for the cleanlab rows). (other clock):"
    " runs made in another session than the setting's uniform runs (docs/results/offline/ on"
    " 2026-11-29, docs/results/peers/ on 2026-12-01, docs/results/holdout_free/runs/ in the"
    " session its runs/sessions.json names, the rest in the session of the date above), whose"
    " seconds are not compared: the machine's speed varied by up to 2× between sessions, and a CPU without"
    " native bf16 scores the candidates in fp32 (select.candidate_precision: auto) where the"
    " earlier sessions' scored them in bf16; their accuracy and samples compare."
)


LABELS = {"holdout": "holdout", "crossfit_auto": "crossfit (shipped: channel round, auto channel)",
          "crossfit_cont": "crossfit (channel round's model continued)",
          "crossfit_e16": "crossfit (16-epoch models)",
          "crossfit_c3": "crossfit (3-epoch channel round, fitted rate)",
          "crossfit_fwd": "crossfit (forward round, anchor channel)",
          "crossfit": "crossfit, one round", "crossfit_r2": "crossfit, refit round",
          "crossfit_cleaned": "crossfit of the points the shipped cache's cleaning keeps "
                              "(on those points)"}  # fmt: skip


def timed_caches(runs: Path) -> dict[str, str]:
    """Each cache command's seconds as a table cell, with when its log was written (UTC): the
    machine's speed varies between sessions, so a cell says which session timed it."""
    out = {}
    for name, seconds in cache_seconds(runs).items():
        when = (runs / "logs" / f"cache_{name}.txt").stat().st_mtime
        stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        out[name] = f"{seconds:.0f} ({stamp:%Y-%m-%d %H:%M})"
    return out


def diagnostics(setting: str, caches: dict[str, str], stored: dict[str, list[str]]) -> str:
    """What each predictor with a cache for this setting says about the mislabeled points.
    A row is measured where the cache is on this machine and kept in ``stored`` (name ->
    cells, the report's diagnostics.json); a cache made in another session gives its stored
    row (cache files are large and not kept, the rows they gave are)."""
    head = ["predictor", "noise model", "est. noise", "T", "cache s", "AUROC"]
    head += [f"clean q{int(100 * q)}" for q in QUANTILES]
    head += [f"mislabeled q{int(100 * q)}" for q in QUANTILES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, predictor in CACHES.items():
        name = f"{key}_{setting}"  # the hold-out model's cache is the same for every setting,
        if cache_path(setting, predictor).exists():  # its diagnostics are not
            stored[name] = _diagnostic_cells(key, setting, caches, stored.get(name))
        if name in stored:
            lines.append("| " + " | ".join(stored[name]) + " |")
    return "\n".join(lines) + "\n"


def _diagnostic_cells(
    key: str, setting: str, caches: dict[str, str], before: list[str] | None
) -> list[str]:
    from bdsel.cache.format import read_cache_info

    predictor = CACHES[key]
    info = read_cache_info(cache_path(setting, predictor))
    overrides = [*predictor_overrides(setting, predictor), "select.method=bayesian"]
    result = summarize(*label_logprobs("fashion_mnist", overrides))
    seconds = caches.get("holdout" if key == "holdout" else f"{key}_{setting}")
    if seconds is None and before is not None:
        seconds = before[4]  # the same cache, timed when it was made
    observed = key != "holdout"
    return [
        LABELS[key],
        info.get("noise_model", "symmetric") if observed else "- (clean labels)",
        f"{100 * info['label_noise_rate']:.1f}%" if observed else "-",
        f"{info['temperature_denoised' if observed else 'temperature']:.3f}",
        seconds or "?",
        f"{result['auroc']:.4f}",
        *(f"{v:.2f}" for v in (*result["clean"], *result["noisy"])),
    ]


def cleaning_lines(res: dict[str, Result], runs: Path) -> list[str]:
    """What cleanlab flagged on each cache the cleaned runs of a setting cleaned by."""
    lines, done = [], set()
    for x in res.values():
        key = next((k for k, v in CACHES.items() if v == x.arm.cleans), None)
        c = read_summary(run_dir(x.runs[0], runs)).get("cleaning") if key else None
        if key in done or not c:
            continue
        done.add(key)
        lines += [f"cleanlab on the {LABELS[key]} cache flags {c['n_flagged']:,} of "
                  f"{c['n_points']:,} points (precision {100 * c['precision']:.1f}%, recall "
                  f"{100 * c['recall']:.1f}%); {100 * c['mislabeled_left']:.1f}% of the rest "
                  "are mislabeled.", ""]  # fmt: skip
    return lines


def at_samples(x: Result, budget: float) -> float | None:
    """Mean over seeds of the test accuracy at the last evaluation within ``budget``
    gradient samples (None when a run has none)."""
    accs = [at[-1]["test_acc"] for rs in x.records if (at := [r for r in rs
            if r["samples_seen"] <= budget])]  # fmt: skip
    return statistics.fmean(accs) if len(accs) == len(x.records) else None


COMPARED = ("bayesian_crossfit_auto", "bayesian_crossfit_fwd", "bayesian_holdout", "uniform")


def equal_steps_lines(res: dict[str, Result]) -> list[str]:
    """Each cleaned-then-uniform row against the selecting runs at its own (smaller) step
    count: cleaning drops points, so its 100 epochs take fewer steps than theirs."""
    lines = []
    for x in res.values():
        if x.arm.cleans is None or "select.method=uniform" not in x.arm.overrides:
            continue
        budget = statistics.fmean(rs[-1]["samples_seen"] for rs in x.records)
        final = statistics.fmean(x.finals.values())
        others = [f"{res[k].arm.label} {100 * acc:.2f}%" for k in COMPARED
                  if k in res and (acc := at_samples(res[k], budget)) is not None]  # fmt: skip
        if others:
            lines += [f"At equal steps: {x.arm.label} ends at {100 * final:.2f}% after "
                      f"{budget:,.0f} gradient samples; at their last evaluation within as many"
                      f" (mid-schedule), {', '.join(others)}.", ""]  # fmt: skip
    return lines


def report(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    caches = timed_caches(args.runs)
    stored_path = args.out / "diagnostics.json"
    stored = _read_json(stored_path)
    text = ["# Bayesian selection without a clean hold-out set", ""]
    text += [
        f"`python experiments/holdout_free.py` on {datetime.date.today()}: every run is `bdsel",
        "train --config fashion_mnist` with the overrides below, 100 epochs, one process per",
        f"core with one thread ({os.cpu_count()}-core CPU; torch {torch.__version__}). Test",
        "accuracy: the weight EMA with recalibrated BN statistics.",
        "",
        "| run | overrides |",
        "|---|---|",
    ]
    for r in RUNS:
        if has_summary(run_dir(r, args.runs)):
            where = f" (from `{r.stored.relative_to(RESULTS)}`)" if r.stored else ""
            text.append(f"| {r.name} | `{' '.join(r.overrides())}`{where} |")
    if (args.out / "cache_cost.md").exists():  # experiments/cache_cost.py
        text += ["", "The two predictors' caches timed side by side in one run:",
                 "[cache_cost.md](cache_cost.md)."]  # fmt: skip
    for setting, (title, _) in SETTINGS.items():
        res = results(setting, args.runs)
        if "uniform" not in res:
            continue
        targets = uniform_targets(list(res["uniform"].finals.values()))
        sub = args.out / setting
        make_report([run_dir(r, args.runs) for x in res.values() for r in x.runs],
                    targets=targets, out_dir=sub)  # fmt: skip
        text += ["", f"## {title}", "", table(res, targets), NOTE, ""]
        text += ["What the predictors say about the mislabeled training points (log p_zs of the",
                 "observed label at the temperature `auto` reads; AUROC: how often a mislabeled",
                 "point gets less than a clean one; cache s: the cache command's seconds and when",
                 "it ended (UTC), one process per core beside another: the machine's speed varied",
                 "by 2.2× between sessions, so compare them within a session only):", "",
                 diagnostics(setting, caches, stored)]  # fmt: skip
        text += cleaning_lines(res, runs=args.runs) + equal_steps_lines(res)
        text += [f"Curves: [{setting}/]({setting}/report.html)", "",
                 f"![accuracy against epochs]({setting}/accuracy_vs_epoch.png)"]  # fmt: skip
        log(f"{title}: {sum(len(x.runs) for x in res.values())} runs -> {sub}")
    (args.out / "README.md").write_text("\n".join(text) + "\n")
    stored_path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    keep_records(args.runs, args.out)


def main() -> None:
    experiment_main(__doc__, "runs/holdout_free", "docs/results/holdout_free", run_missing, report)


if __name__ == "__main__":
    main()
