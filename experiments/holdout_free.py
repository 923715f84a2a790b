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
  trained through it.
- bayesian (crossfit, channel round's model continued; 16-epoch models; 3-epoch channel
  round, fitted rate): three cheaper caches than the shipped one, measured against it
  (``refit_init=continue``: 36 model-epochs; ``epochs=16``: 40; ``channel_epochs=3
  channel=fitted``: 39; the shipped default's 44).

The recipes of the grid's ``RETIRED`` (continued, fitted rate, anchor channel, refit round,
models of the cleaned points) lost and left bdsel: their runs are reported from the kept
records and never made again.
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
import json
import os
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from holdout_free_grid import (
    ARMS,
    CACHES,
    KEPT,
    RESULTS,
    RUNS,
    SETTINGS,
    Arm,
    Run,
    cache_jobs,
    cache_path,
    command,
    predictor_overrides,
    run_dir,
    selected,
)
from jobs import copy_records, experiment_main, log, run_pool
from peers import cache_seconds
from predictor_noise import QUANTILES, label_logprobs, summarize

from bdsel.report import make_report
from bdsel.rundir import has_summary, read_metrics, read_summary
from bdsel.targets import first_reaching, uniform_targets


def run_missing(args: argparse.Namespace) -> None:
    skip = set(args.skip.split(",")) if args.skip else set()
    todo = [r for r in selected(args.only) if not has_summary(run_dir(r, args.runs))]
    todo = [r for r in todo if r.name not in skip]
    for r in (r for r in todo if r.arm.retired):
        log(f"{r.name}: not made (its recipe left bdsel; only kept records are reported)")
    todo = [r for r in todo if not r.arm.retired]
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
    " native bf16 scores the candidates in fp32 (bdsel.forward.candidate_precision) where the"
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
        path = cache_path(setting, predictor)  # None: a retired recipe's, its stored row
        if path is not None and path.exists():  # its diagnostics are not
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
