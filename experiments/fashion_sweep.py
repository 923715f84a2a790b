"""The evidence experiment: every selection method on Fashion-MNIST, several seeds and noise rates.

Three phases, each resumable (a finished run, one with a summary.json, is never rerun):

1. ``cache``: the hold-out predictor's cache (the offline stand-in for CLIP; one cache serves
   every run: the split and the hold-out do not depend on the seed or the noise rate).
2. ``tune``: a coordinate search over what the paper leaves to tuning (α, n_effective, prior
   precision τ0) at --tune-noise (20%), seeds 0 and 1, 30 epochs, scored by the final accuracy
   of the EMA weights (the area under the curve reported beside it) on a clean validation
   split carved from the held-out part of the training set (data.validation_fraction): never
   on the test set. ``--jobs 2`` runs two trials at once, one thread each. The search and the
   chosen values go to tuning.json/.md.
3. ``run``: every method x noise rate x seed on the test set, the chosen values for bayesian;
   then ``bdsel report`` per noise rate and the cost table (wall-clock to each target and
   per-step cost relative to uniform), all under ``--out``.

    python experiments/fashion_sweep.py --out docs/results            # all phases
    python experiments/fashion_sweep.py --out docs/results --phase report

Run directories go under ``--runs`` (default runs/sweep); only the summaries, tables and
figures go under ``--out``. Targets are chosen as RHO-LOSS chose them, from uniform alone:
the higher one is uniform's mean final test accuracy rounded down to a whole percent, the lower
one five points under it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fashion_sweep_grid import (
    CONFIG,
    GRID,
    METHODS,
    PINNED,
    START,
    log,
    run_all,
    run_once,
    validation_summary,
)

from bdsel.configure import load_config
from bdsel.data import load_dataset
from bdsel.predict import cache_zeroshot, default_cache_path
from bdsel.report import make_report
from bdsel.rundir import has_summary, read_metrics
from bdsel.targets import epochs_to_target, seconds_to_target, uniform_targets

# ---------------------------------------------------------------------------------------------


def phase_cache(args: argparse.Namespace) -> None:
    config = load_config(CONFIG, PINNED)
    path = default_cache_path(config)
    if path.is_file():
        log(f"cache {path} exists")
        return
    t0 = time.perf_counter()
    cache_zeroshot(config, progress=False)
    log(f"cache {path} written in {time.perf_counter() - t0:.0f} s")


def choose(scores: dict[float, float], current: float, margin: float) -> float:
    """The best-scoring value if it beats ``current``'s score by more than ``margin``, else
    ``current``."""
    top = max(scores, key=lambda v: scores[v])
    return top if scores[top] > scores[current] + margin else current


def phase_tune(args: argparse.Namespace, dataset: Any) -> dict[str, Any]:
    """Coordinate search over GRID from START, each trial every seed of --tune-seeds; the
    criterion is the final validation accuracy, mean over seeds. A value replaces the current
    one only if it beats it by more than --tune-margin (differences within the seeds' spread
    are not evidence)."""
    out = args.out / "tuning.json"
    common = {
        "train.epochs": args.tune_epochs,
        "data.noise.rate": args.tune_noise,
        "data.validation_fraction": args.validation_fraction,
        "eval.every": args.tune_eval_every,
        "select.method": "bayesian",
    }
    seeds = args.tune_seeds
    t_start = time.perf_counter()

    def run_dir(values: dict[str, Any], seed: int) -> Path:
        name = "-".join(f"{k.split('.')[-1]}{v:g}" for k, v in values.items())
        return args.runs / "tune" / name / f"seed{seed}"

    trials: list[dict[str, Any]] = []

    def evaluate(candidates: list[dict[str, Any]]) -> list[float]:
        jobs = [(run_dir(v, s), {**common, **v, "seed": s}) for v in candidates for s in seeds]
        run_all(jobs, args.jobs, dataset)
        scores = []
        for values in candidates:
            per_seed = [validation_summary(run_dir(values, s)) for s in seeds]
            trial = {
                **values,
                "val_acc_final": float(np.mean([r["val_acc_final"] for r in per_seed])),
                "val_acc_final_seeds": [r["val_acc_final"] for r in per_seed],
                "val_acc_mean": float(np.mean([r["val_acc_mean"] for r in per_seed])),
            }
            if not any(all(t[k] == trial[k] for k in values) for t in trials):
                trials.append(trial)
                log(f"tune {values}: final val acc {trial['val_acc_final']:.4f}")
            scores.append(trial["val_acc_final"])
        return scores

    # uniform on the same split, for scale: how far above it the search moves the score
    ref_jobs = [
        (
            args.runs / "tune" / "uniform" / f"seed{s}",
            {**common, "select.method": "uniform", "seed": s},
        )
        for s in seeds
    ]
    run_all(ref_jobs, args.jobs, dataset)
    ref = [validation_summary(d) for d, _ in ref_jobs]
    reference = {k: float(np.mean([r[k] for r in ref])) for k in ("val_acc_final", "val_acc_mean")}
    best = dict(START)
    for key, candidates in GRID.items():  # one coordinate at a time, the others at their best
        scores = dict(
            zip(candidates, evaluate([{**best, key: v} for v in candidates]), strict=True)
        )
        best[key] = choose(scores, best[key], args.tune_margin)
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "wall_s": round(time.perf_counter() - t_start),
        "criterion": f"final validation accuracy (EMA weights), mean over seeds {seeds}",
        "margin": args.tune_margin,
        "setting": common,
        "seeds": seeds,
        "n_validation": _n_validation(args, dataset),
        "start": START,
        "grid": GRID,
        "trials": trials,
        "uniform_reference": reference,
        "chosen": best,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    _write_tuning_md(args.out / "tuning.md", result)
    log(f"tuning chose {best}")
    return result


def _n_validation(args: argparse.Namespace, dataset: Any) -> int:
    from bdsel.data import derive_run_data

    cfg = load_config(CONFIG, [*PINNED, f"data.validation_fraction={args.validation_fraction}"])
    return len(derive_run_data(dataset, cfg.data, cfg.seed, cfg.holdout_fraction).validation_idx)


def _trial_score(result: dict[str, Any], values: dict[str, Any]) -> float:
    return next(
        t["val_acc_final"] for t in result["trials"] if all(t[k] == v for k, v in values.items())
    )


def _write_tuning_md(path: Path, result: dict[str, Any]) -> None:
    keys = list(GRID)
    seeds = ", ".join(map(str, result["seeds"]))
    lines = [
        "# Tuning of the Bayesian score (validation split, never the test set)",
        "",
        f"`{result.get('command', '?')}` on {result.get('date', '?')}, "
        f"{result.get('wall_s', 0) / 60:.0f} minutes.",
        "",
        f"Setting: {json.dumps(result['setting'])}, seeds {seeds}; {result['n_validation']} "
        "clean-labelled validation images carved from the part of Fashion-MNIST's training set "
        "that neither the train subset nor the hold-out model uses.",
        f"Criterion: {result['criterion']}; the area under the curve (mean over the evaluated "
        "epochs) beside it. Search: one coordinate at a time, in the order below, from the "
        "paper's CIFAR-10 values; a value replaces the current one only if it scores more than "
        f"{100 * result['margin']:g} points above it. The temperature is not searched: "
        "`zeroshot.temperature: auto` fits it when the cache is made.",
        "",
        "| "
        + " | ".join(k.split(".")[-1] for k in keys)
        + " | final val acc (mean) | per seed | mean over epochs |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for t in result["trials"]:
        cells = [f"{t[k]:g}" for k in keys]
        per_seed = " / ".join(f"{100 * a:.2f}" for a in t["val_acc_final_seeds"])
        lines.append(
            "| " + " | ".join(cells) + f" | {100 * t['val_acc_final']:.2f}% | {per_seed} "
            f"| {100 * t['val_acc_mean']:.2f}% |"
        )
    ref = result["uniform_reference"]
    lines.append(
        "| uniform (reference) | | "
        f"| {100 * ref['val_acc_final']:.2f}% | | {100 * ref['val_acc_mean']:.2f}% |"
    )
    chosen = ", ".join(f"{k} = {v:g}" for k, v in result["chosen"].items())
    finals = [t["val_acc_final"] for t in result["trials"]]
    seed_gap = max(
        max(t["val_acc_final_seeds"]) - min(t["val_acc_final_seeds"]) for t in result["trials"]
    )
    lines += [
        "",
        f"The trials span {100 * min(finals):.2f}% to {100 * max(finals):.2f}% "
        f"({100 * (max(finals) - min(finals)):.2f} points); the seeds of one trial differ by up "
        f"to {100 * seed_gap:.2f} points.",
        "",
        f"Chosen: {chosen}.",
        "",
        f"The paper's CIFAR-10 values scored {100 * _trial_score(result, result['start']):.2f}%, "
        f"the chosen ones {100 * _trial_score(result, result['chosen']):.2f}%.",
        "",
    ]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------


def run_dir_for(args: argparse.Namespace, noise: float, method: str, seed: int) -> Path:
    return args.runs / f"noise{round(100 * noise)}" / method / f"seed{seed}"


def phase_run(args: argparse.Namespace, dataset: Any, chosen: dict[str, Any]) -> None:
    # Seed-major: if the sweep is cut short, the finished seeds still give whole tables.
    for seed in args.seeds:
        for noise in sorted(args.noise, reverse=True):
            for method in args.methods:
                values: dict[str, Any] = {
                    "seed": seed,
                    "train.epochs": args.epochs,
                    "data.noise.rate": noise,
                    "select.method": method,
                }
                if method == "bayesian":
                    values.update(chosen)
                run_once(run_dir_for(args, noise, method, seed), values, dataset)


def finished_runs(args: argparse.Namespace, noise: float, method: str) -> list[Path]:
    """The method's run directories at this noise rate that finished (have a summary)."""
    dirs = sorted((args.runs / f"noise{round(100 * noise)}" / method).glob("seed*"))
    return [d for d in dirs if has_summary(d)]


def choose_targets(runs: list[Path]) -> list[float]:
    return uniform_targets([read_metrics(r)[-1]["test_acc"] for r in runs])


def phase_report(args: argparse.Namespace) -> None:
    sections = []
    for noise in sorted(args.noise):
        base = args.runs / f"noise{round(100 * noise)}"
        uniform = finished_runs(args, noise, "uniform")
        if not uniform:
            log(f"no runs under {base}: skipped")
            continue
        targets = choose_targets(uniform)
        out = args.out / f"noise{round(100 * noise)}"
        make_report([base], targets=targets, out_dir=out)
        (out / "report.html").unlink(missing_ok=True)  # the PNGs again, inlined: 1 MB each
        (out / "runs.csv").write_text(per_run_csv(args, noise, targets))
        cost = cost_table(args, noise, targets)
        (out / "cost.md").write_text(cost + "\n")
        sections.append((noise, targets, (out / "table.md").read_text().strip(), cost))
        log(f"report for {100 * noise:g}% noise in {out}")
    write_readme(args, sections)


def per_run_csv(args: argparse.Namespace, noise: float, targets: list[float]) -> str:
    """One line per run (every seed): epochs and seconds to each target, final accuracy."""
    head = ["method", "seed", "noise_rate", "steps", "wall_s", "selection_s", "final_test_acc"]
    head += [f"epochs_to_{t:g}" for t in targets] + [f"wall_s_to_{t:g}" for t in targets]
    head += ["selected_noisy_frac_mean"]
    lines = [",".join(head)]
    for method in args.methods:
        for d in finished_runs(args, noise, method):
            m = read_metrics(d)
            last = m[-1]
            noisy = [
                r["selected_noisy_frac"] for r in m if r.get("selected_noisy_frac") is not None
            ]
            cells = [method, d.name.removeprefix("seed"), f"{noise:g}", str(last["step"])]
            cells += [f"{last['wall_s']:.2f}", f"{last['selection_s']:.2f}", f"{last['test_acc']}"]
            cells += [str(epochs_to_target(m, t) or "") for t in targets]
            times = [seconds_to_target(m, t) for t in targets]
            cells += ["" if x is None else f"{x:.2f}" for x in times]
            cells.append(f"{np.mean(noisy):.4f}" if noisy else "")
            lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def cost_table(args: argparse.Namespace, noise: float, targets: list[float]) -> str:
    """Per method: per-step cost vs uniform, wall-clock to each target (selection included)."""
    rows = []
    base_step = None
    for method in args.methods:
        dirs = finished_runs(args, noise, method)
        if not dirs:
            continue
        per_step, share, to_target = [], [], {t: [] for t in targets}
        for d in dirs:
            m = read_metrics(d)
            per_step.append(m[-1]["wall_s"] / m[-1]["step"])
            share.append(m[-1]["selection_s"] / m[-1]["wall_s"])
            for t in targets:
                to_target[t].append(seconds_to_target(m, t))
        step_ms = 1000 * float(np.mean(per_step))
        if method == "uniform":
            base_step = step_ms
        rows.append((method, len(dirs), step_ms, float(np.mean(share)), to_target))
    head = "| method | seeds | ms / step | vs uniform | selection share |"
    head += "".join(f" time to {100 * t:g}% |" for t in targets)
    lines = [head, "|" + "---|" * (5 + len(targets))]
    for method, n, step_ms, share, to_target in rows:
        ratio = f"{step_ms / base_step:.2f}x" if base_step else "-"
        cells = [method, str(n), f"{step_ms:.1f}", ratio, f"{100 * share:.0f}%"]
        for t in targets:
            reached = [v for v in to_target[t] if v is not None]
            text = f"{np.mean(reached):.0f} s" if reached else "never"
            if reached and len(reached) < n:
                text += f" ({len(reached)}/{n})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(args: argparse.Namespace, sections: list[tuple]) -> None:
    tuning = args.out / "tuning.json"
    chosen = json.loads(tuning.read_text())["chosen"] if tuning.is_file() else {}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    cpu = _cpu_name()
    lines = [
        "# Results: every method on Fashion-MNIST (offline)",
        "",
        f"- Command: `{args.command}`",
        f"- Machine: {cpu}, {torch.get_num_threads()} threads, no GPU; "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- torch {torch.__version__}; commit {commit or 'unknown'}; "
        f"date {datetime.date.today().isoformat()}",
        f"- Setting: config `{CONFIG}` (train subset: half of the training set, 30,000 images; "
        "small CNN, AdamW lr 1e-3, 320 candidates -> 32 selected per step), "
        f"{args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}; the hold-out model "
        "(trained on 12,000 clean held-out images) stands in for CLIP.",
        "- Bayesian values chosen on the validation split (tuning.md): "
        + ", ".join(f"{k} = {v:g}" for k, v in chosen.items()),
        "- Targets: the higher is uniform's mean final test accuracy rounded down to a whole "
        "percent, the lower five points under it (chosen from uniform alone, as RHO-LOSS did).",
        "- Wall-clock: training time of the run, selection included (SVP's proxy training "
        "included), evaluation excluded; one run at a time on the whole machine.",
        "",
    ]
    for noise, _targets, table, cost in sections:
        tag = f"noise{round(100 * noise)}"
        lines += [
            f"## {100 * noise:g}% symmetric label noise",
            "",
            "Epochs to target test accuracy (mean over seeds; (k/n): seeds that reached it), "
            "final accuracy, share of noisy labels among the selected points:",
            "",
            table,
            "",
            "Cost of selection (per-step cost and wall-clock to each target, means over seeds):",
            "",
            cost,
            "",
            f"![accuracy]({tag}/accuracy_vs_epoch.png)",
            "",
            f"Per run (every seed): [{tag}/runs.csv]({tag}/runs.csv); per group: "
            f"[{tag}/table.csv]({tag}/table.csv).",
            "",
        ]
        if noise > 0:
            lines += [f"![noise in selection]({tag}/noise_in_selection.png)", ""]
    (args.out / "README.md").write_text("\n".join(lines))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/sweep"))
    p.add_argument("--phase", choices=["all", "cache", "tune", "run", "report"], default="all")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--noise", default="0,0.2", help="comma-separated symmetric noise rates")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--tune-epochs", type=int, default=30)
    p.add_argument("--tune-noise", type=float, default=0.2)
    p.add_argument("--tune-seeds", default="0,1")
    p.add_argument("--tune-eval-every", type=int, default=3)
    p.add_argument("--tune-margin", type=float, default=0.002, help="accuracy, 0.002 = 0.2 points")
    p.add_argument(
        "--jobs", type=int, default=1, help="tuning runs at once, one thread each (one per core)"
    )
    p.add_argument("--validation-fraction", type=float, default=0.1)
    args = p.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.noise = [float(x) for x in args.noise.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.tune_seeds = [int(x) for x in args.tune_seeds.split(",")]
    # What reproduces everything here in one go (the phases can also be run one at a time).
    args.command = (
        f"python experiments/fashion_sweep.py --out {args.out} --noise "
        f"{','.join(f'{x:g}' for x in args.noise)} --seeds {','.join(map(str, args.seeds))} "
        f"--epochs {args.epochs}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = None
    if args.phase in ("all", "tune", "run"):
        config = load_config(CONFIG, PINNED)
        dataset = load_dataset(config.data)
    if args.phase in ("all", "cache"):
        phase_cache(args)
    chosen = dict(START)
    if args.phase in ("all", "tune"):
        chosen = phase_tune(args, dataset)["chosen"]
    elif (args.out / "tuning.json").is_file():
        chosen = json.loads((args.out / "tuning.json").read_text())["chosen"]
    if args.phase in ("all", "run"):
        phase_run(args, dataset, chosen)
    if args.phase in ("all", "report"):
        phase_report(args)


if __name__ == "__main__":
    main()
