"""Selection on the clock, predictor included (docs/results/end_to_end/): bayesian with the
``probe`` predictor against uniform and full-data training at equal seconds end to end, on the
offline default at 20% and 40% symmetric and 30% pairflip label noise.

Per noise setting and seed, in one session, one process per core with one thread:

1. the probe cache (its seconds are recorded in it: ``predictor_seconds``);
2. uniform for 100 epochs, and full-data training (batches of 128) for the same gradient
   samples (10 epochs: 234 steps of 128 each, against uniform's 93 steps of 32 each × 100);
3. the reference: whichever of the two ends higher, and its seconds;
4. bayesian with the probe cache, given the reference's seconds end to end
   (``train.budget_s``: the cache's seconds count against it).

The report: per setting, the reference, bayesian's end-to-end seconds to the reference's
final accuracy (its ratio to the reference's seconds), and bayesian's and uniform's final
accuracy at those equal seconds, over seeds; the runs' own ``bdsel report`` beside it.

    python experiments/end_to_end.py                    # run what is missing, then report
    python experiments/end_to_end.py --phase report
    python experiments/end_to_end.py --only 'p20-s0-*'
    python experiments/end_to_end.py --skip '*warm*'   # without the warm-up arms (warmup/)
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
from pathlib import Path

from jobs import bdsel_executable, copy_records, experiment_main, log, run_pool

from bdsel.report import make_report
from bdsel.rundir import has_summary, read_metrics, read_summary
from bdsel.targets import first_reaching

# noise setting -> (overrides, seeds)
SETTINGS = {
    "p20": (("data.noise.kind=symmetric", "data.noise.rate=0.2"), (0, 1, 2)),
    "p40": (("data.noise.kind=symmetric", "data.noise.rate=0.4"), (0, 1)),
    "pf30": (("data.noise.kind=pairflip", "data.noise.rate=0.3"), (0, 1)),
}
COMMON = ("eval.every=2", "zeroshot.predictor=probe")
ARMS = {
    "uniform": ("select.method=uniform", "train.epochs=100", "eval.every=4"),
    "full": ("select.method=full", "select.n_candidates=128", "train.epochs=10", "eval.every=1"),
    # at most 100 epochs: the budget (the reference's seconds) stops it first
    "bayesian": ("select.method=bayesian", "train.epochs=100"),
    # the step-cost lever: half the candidates to forward and score (32 of 160)
    "bayesian_nb160": ("select.method=bayesian", "select.n_candidates=160", "train.epochs=100"),
    # the other lever: forward only the third of the 320 candidates whose last scores were
    # highest (every candidate in the first selecting epoch)
    "bayesian_rescore": ("select.method=bayesian", "select.rescore=0.34", "train.epochs=100"),
    # uniform's cheap steps while the model still learns the clean labels first, selection
    # once noise could be memorised: the first 10 or 30 epochs pick as uniform, no forward
    "bayesian_nb160_warm10": ("select.method=bayesian", "select.n_candidates=160",
                              "select.warmup_epochs=10", "train.epochs=100"),
    "bayesian_nb160_warm30": ("select.method=bayesian", "select.n_candidates=160",
                              "select.warmup_epochs=30", "train.epochs=100"),
    "bayesian_warm30": ("select.method=bayesian", "select.warmup_epochs=30", "train.epochs=100"),
}  # fmt: skip
BAYES_ARMS = tuple(arm for arm, sets in ARMS.items() if "select.method=bayesian" in sets)
BOUNDS = {"p20": 0.8, "p40": 0.5, "pf30": 0.5}  # the bound on bayesian's seconds ratio


def overrides(setting: str, seed: int, *extra: str) -> list[str]:
    noise, _ = SETTINGS[setting]
    return [*noise, f"seed={seed}", *COMMON, *extra]


def command(verb: str, sets: list[str], *more: str) -> list[str]:
    args = [bdsel_executable(), verb, "--config", "fashion_mnist"]
    for s in sets:
        args += ["--set", s]
    return [*args, *more]


def cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(name, seed) for name, (_, seeds) in SETTINGS.items() for seed in seeds]


def wanted(args: argparse.Namespace, name: str) -> bool:
    only = [p for p in args.only.split(",") if p]
    skip = [p for p in args.skip.split(",") if p]
    return (not only or any(fnmatch.fnmatch(name, p) for p in only)) and not any(
        fnmatch.fnmatch(name, p) for p in skip
    )


def reference(runs: Path, setting: str, seed: int) -> tuple[str, float, float]:
    """(arm, final accuracy, seconds) of the better of uniform and full-data."""
    best = None
    for arm in ("uniform", "full"):
        summary = read_summary(runs / f"{setting}-s{seed}-{arm}")
        candidate = (arm, summary["final_test_acc"], summary["wall_s"])
        if best is None or candidate[1] > best[1]:
            best = candidate
    return best


def run_missing(args: argparse.Namespace) -> None:
    runs = args.runs
    first = []
    for setting, seed in cells(args):
        cell = f"{setting}-s{seed}"
        if wanted(args, f"{cell}-cache"):
            first.append((f"{cell}-cache", command("cache-zeroshot", overrides(setting, seed))))
        for arm in ("uniform", "full"):
            name = f"{cell}-{arm}"
            if wanted(args, name) and not has_summary(runs / name):
                sets = overrides(setting, seed, *ARMS[arm])
                first.append((name, command("train", sets, "--run-dir", str(runs / name),
                                            "--overwrite")))  # fmt: skip
    run_pool(first, runs, args.jobs)
    second = []
    for setting, seed in cells(args):
        for arm in BAYES_ARMS:
            name = f"{setting}-s{seed}-{arm}"
            if not wanted(args, name) or has_summary(runs / name):
                continue
            _, _, seconds = reference(runs, setting, seed)
            sets = overrides(setting, seed, *ARMS[arm], f"train.budget_s={seconds:.1f}")
            cmd = command("train", sets, "--run-dir", str(runs / name), "--overwrite")
            second.append((name, cmd))
    run_pool(second, runs, args.jobs)


def e2e_to(records: list[dict], target: float) -> float | None:
    record = first_reaching(records, target)
    if record is None:
        return None
    return record["wall_s"] + (record.get("predictor_s") or 0.0)


def acc_at(records: list[dict], seconds: float) -> float:
    """The accuracy of the last evaluation within ``seconds`` end to end."""
    within = [r for r in records if r["wall_s"] + (r.get("predictor_s") or 0.0) <= seconds + 1e-9]
    return within[-1]["test_acc"] if within else float("nan")


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


def report(args: argparse.Namespace) -> None:
    runs, out = args.runs, args.out
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Selection on the clock, predictor included",
        "",
        "Offline default (Fashion-MNIST, 30,000 training images, small CNN), 2-core CPU, one "
        "process per core with one thread, every run of this table in one session "
        "(`python experiments/end_to_end.py`). Reference: the better of uniform (100 epochs) "
        "and full-data training (batches of 128, the same gradient samples). Bayesian reads "
        "the `probe` cache and is given the reference's seconds end to end "
        "(`train.budget_s`: the cache's seconds count). Accuracies are the weight EMA's on "
        "the 10,000 test images.",
    ]
    names: list[str] = []
    for arm in BAYES_ARMS:
        lines += ["", f"## {arm} ({' '.join(ARMS[arm])})", "",
                  "| noise | seed | reference (final, s) | probe cache s | probe test acc | "
                  "s end to end to the reference's final acc | ratio | final at equal s | "
                  "uniform at equal s | − uniform |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        summary: dict[str, list[tuple]] = {}
        for setting, seed in cells(args):
            cell = f"{setting}-s{seed}"
            if not all(has_summary(runs / f"{cell}-{a}") for a in ("uniform", "full", arm)):
                continue
            names += [
                n for n in (f"{cell}-{a}" for a in ("uniform", "full", arm)) if n not in names
            ]
            ref_arm, ref_acc, ref_s = reference(runs, setting, seed)
            bayes = read_metrics(runs / f"{cell}-{arm}")
            uniform = read_metrics(runs / f"{cell}-uniform")
            pred_s, pred_acc = bayes[-1]["predictor_s"], bayes[-1]["predictor_test_acc"]
            reach = e2e_to(bayes, ref_acc)
            clock = bayes[-1]["wall_s"] + pred_s  # its whole run, end to end
            b_acc, u_acc = bayes[-1]["test_acc"], acc_at(uniform, clock)
            ratio = None if reach is None else reach / ref_s
            summary.setdefault(setting, []).append((ratio, b_acc, u_acc))
            lines.append(
                f"| {setting} | {seed} | {ref_arm} {100 * ref_acc:.2f}%, {ref_s:.0f} s | "
                f"{pred_s:.1f} | {100 * pred_acc:.2f}% | "
                f"{'never' if reach is None else f'{reach:.0f}'} | "
                f"{'-' if ratio is None else f'{ratio:.2f}x'} | {100 * b_acc:.2f}% | "
                f"{100 * u_acc:.2f}% | {100 * (b_acc - u_acc):+.2f} |"
            )
        lines += ["", "| noise | seeds | ratio (bound) | final | uniform at equal s | − uniform |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for setting, rows in summary.items():
            ratios = [r[0] for r in rows]
            ratio = "never" if None in ratios else f"{statistics.mean(ratios):.2f}x"
            lines.append(
                f"| {setting} | {len(rows)} | {ratio} (≤ {BOUNDS[setting]}x) | "
                f"{mean_sd([r[1] for r in rows])} | {mean_sd([r[2] for r in rows])} | "
                f"{mean_sd([r[1] - r[2] for r in rows]).replace('%', ' pts')} |"
            )
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text)
    print(text)
    copy_records(runs, names, out)
    if names:
        make_report([runs / n for n in names], out_dir=out / "report")
    log(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    experiment_main(__doc__, "runs/end_to_end", "docs/results/end_to_end", run_missing, report)
