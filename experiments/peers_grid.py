"""The grid of experiments/peers.py: its arms, noise rates and runs as data, the caches they
read and the commands that make them."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from jobs import HOLDOUT, bdsel_executable

STORED_DIR = Path(__file__).resolve().parents[1] / "docs" / "results" / "offline" / "runs"

BAYES = ("select.method=bayesian",)

LONG = ("train.epochs=100", "eval.every=4")

FULL_DATA = ("select.n_candidates=128", "train.epochs=15")

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
        return [f"seed={self.seed}", HOLDOUT, *NOISE[self.rate], *self.arm.overrides]


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
    from bdsel.configure import load_config
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


CACHE_BASE = ["cache-zeroshot", "--config", "fashion_mnist", "--set", "seed=0", "--set", HOLDOUT]


def holdout_cache() -> Path:
    """The hold-out model's cache: it learns clean labels, so one serves every rate."""
    from bdsel.configure import load_config
    from bdsel.predict import default_cache_path

    return default_cache_path(load_config("fashion_mnist", ["seed=0", HOLDOUT]))


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
