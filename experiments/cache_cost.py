"""What a crossfit cache costs against the hold-out one, side by side in one run: the two
``bdsel cache-zeroshot`` commands of the offline default, alternated on one core with one
thread and nothing beside them (hold-out, crossfit, hold-out, ...: a drift of the machine's
speed shows as two hold-out timings that differ), each written to a scratch file so that the
caches under cache/ stay as they are. The seconds are the command's own (fitting included).

    python experiments/cache_cost.py                      # 40% symmetric noise, 2 hold-out runs
    python experiments/cache_cost.py --set data.noise.rate=0.2 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import tempfile
from pathlib import Path

import torch
from jobs import bdsel_executable, log, run_pool
from peers import logged_cache_seconds

PREDICTORS = {
    "holdout": ("zeroshot.predictor=holdout",),
    "crossfit": ("zeroshot.predictor=crossfit",),
}
# A finished training bar: "2124/2124 steps 0:01:51" (done/total, elapsed).
STEPS = re.compile(r"(\d+)/\1\s+steps\s+(\d+):(\d\d):(\d\d)")


def schedule(repeats: int) -> list[str]:
    """Hold-out first and last, crossfit between: h c h c h for ``repeats`` = 3."""
    return [name for _ in range(repeats - 1) for name in ("holdout", "crossfit")] + ["holdout"]


def command(predictor: str, overrides: list[str], out: Path) -> list[str]:
    sets = [a for v in ("seed=0", *overrides, *PREDICTORS[predictor]) for a in ("--set", v)]
    cmd = [bdsel_executable(), "cache-zeroshot", "--config", "fashion_mnist", *sets]
    return [*cmd, "--out", str(out)]


def seconds_of(log_path: Path) -> float:
    if (seconds := logged_cache_seconds(log_path)) is None:
        raise SystemExit(f"{log_path}: the cache command printed no time")
    return seconds


def steps_of(log_path: Path) -> tuple[int, float]:
    """Training steps and their seconds, summed over the log's finished training bars."""
    bars = [(int(n), 3600 * int(h) + 60 * int(m) + int(sec))
            for n, h, m, sec in STEPS.findall(log_path.read_text(errors="replace"))]  # fmt: skip
    return sum(n for n, _ in bars), float(sum(t for _, t in bars))


Timing = tuple[str, float, tuple[int, float]]  # predictor, seconds, (training steps, their s)


def table(timings: list[Timing], overrides: list[str]) -> str:
    held = [s for name, s, _ in timings if name == "holdout"]
    cross = [s for name, s, _ in timings if name == "crossfit"]
    steps = {
        name: statistics.fmean(n for x, _, (n, _) in timings if x == name) for name in PREDICTORS
    }
    lines = [
        f"# The crossfit cache's seconds against the hold-out cache's ({datetime.date.today()})",
        "",
        "`python experiments/cache_cost.py"
        + "".join(f" --set {v}" for v in overrides)
        + f" --repeats {len(held)}`: the offline default's two caches, in this order on one"
        f" core with one thread and nothing beside them ({os.cpu_count()}-core CPU; torch"
        f" {torch.__version__}).",
        "",
        "| order | predictor | seconds | training steps | steps/s |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {name} | {s:.1f} | {n:,} | {f'{n / t:.1f}' if t else '-'} |"
            for i, (name, s, (n, t)) in enumerate(timings)
        ),
        "",
        f"Crossfit / hold-out: {statistics.fmean(cross) / statistics.fmean(held):.2f}×"
        f" (means; the hold-out runs span {min(held):.1f}–{max(held):.1f} s). Steps/s"
        " shows the machine's speed during each run: a ratio between runs of unequal speed"
        " is the speed's as much as the predictors'. Training steps, crossfit / hold-out:"
        f" {steps['crossfit'] / steps['holdout']:.2f}× (the ratio the seconds tend to at equal"
        " speed: training is most of either command's time).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--set", dest="overrides", action="append", default=None,
                   help="a data override of both caches (default: data.noise.rate=0.4)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=2, help="hold-out runs (crossfit: one fewer)")
    p.add_argument("--runs", type=Path, default=Path("runs/cache_cost"))
    p.add_argument("--out", type=Path, default=Path("docs/results/holdout_free/cache_cost.md"))
    p.add_argument("--report-only", action="store_true", help="rewrite --out from the logs")
    args = p.parse_args()
    if args.repeats < 2:
        raise SystemExit("--repeats: at least 2 (a hold-out run on each side of a crossfit one)")
    overrides = args.overrides if args.overrides is not None else ["data.noise.rate=0.4"]
    names = schedule(args.repeats)
    if not args.report_only:
        with tempfile.TemporaryDirectory() as scratch:
            jobs = [(f"{i}_{name}", command(name, overrides, Path(scratch) / f"{i}_{name}.h5"))
                    for i, name in enumerate(names)]  # fmt: skip
            run_pool(jobs, args.runs, n_jobs=1)
    logs = [args.runs / "logs" / f"{i}_{name}.txt" for i, name in enumerate(names)]
    timings = [(name, seconds_of(p), steps_of(p)) for name, p in zip(names, logs, strict=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(timings, overrides))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
