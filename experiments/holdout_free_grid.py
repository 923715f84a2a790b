"""The grid of experiments/holdout_free.py: its arms, settings and runs as data, the caches
they read and the commands that make them."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from jobs import HOLDOUT, bdsel_executable

from bdsel.rundir import has_summary

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

BAYES = ("select.method=bayesian",)

RHO = ("select.method=rho_loss",)

LONG = ("train.epochs=100", "eval.every=4")

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

# Recipes whose settings left bdsel (refit_init=continue, channel=fitted|anchor, cleaned,
# refit=trusted: each measured below the shipped one, docs/predictors.md): their arms' runs are
# kept records (KEPT), reported as they are and never made again.
RETIRED = (CONTINUE, C3, CLEANED, REFIT, FORWARD)

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

    @property
    def retired(self) -> bool:
        """Whether a cache it reads or cleans by is a retired recipe's (records only)."""
        return self.cache in RETIRED or self.cleans in RETIRED


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
        if self.arm.retired:
            raise SystemExit(f"{self.name}: its recipe left bdsel; its record is kept in {KEPT}")
        return [f"seed={self.seed}", HOLDOUT, *SETTINGS[self.setting][1], *self.arm.overrides]


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
    crossfit models' split and labels do not depend on the run's seed)."""
    return ["seed=0", HOLDOUT, *SETTINGS[setting][1], *predictor]


def cache_path(setting: str, predictor: tuple[str, ...]) -> Path | None:
    """The cache a predictor's overrides make for a setting's data (None: a retired recipe's,
    which bdsel no longer makes)."""
    from bdsel.configure import load_config
    from bdsel.predict import default_cache_path

    if predictor in RETIRED:
        return None
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
    for r in (r for r in todo if not r.arm.retired):
        for predictor in (r.arm.cache, r.arm.cleans):  # the cache it reads, the one it cleans by
            if predictor is not None:
                key = next(k for k, v in CACHES.items() if v == predictor)
                needed["holdout" if key == "holdout" else f"{key}_{r.setting}"] = predictor
    jobs = []
    for name, predictor in needed.items():
        setting = "n20" if name == "holdout" else name.rsplit("_", 1)[1]
        if cache_path(setting, predictor).exists():  # type: ignore[union-attr]
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
