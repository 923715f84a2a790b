"""What to evaluate: raw weights, their EMA, and BN statistics, measured on the same runs.

Every run evaluates four variants after every epoch, so one training trajectory gives the
accuracy of the online (raw) weights and of their EMA with its averaged BN buffers (both
``eval.bn=running``), and, through ``eval.extra``, of the EMA with statistics recalibrated on
a uniform training sample and with the online model's running statistics. Evaluation never
changes training, so the variants are compared on identical trajectories.

    python experiments/eval_variants.py --runs runs/eval_variants --seeds 0    # one seed
    python experiments/eval_variants.py --runs runs/eval_variants --seeds 0,1 --table-only

Prints, per method and variant: final and best test accuracy (mean over seeds) and the
largest drop from one epoch to the next over epochs 10 to the end (max over seeds). The
zero-shot cache of ``--config`` must exist (``bdsel cache-zeroshot --config fashion_mnist``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bdsel.config import load_config
from bdsel.rundir import CHECKPOINT, has_summary, read_metrics
from bdsel.train import train

VARIANTS = {  # label -> metrics key (the runs evaluate with eval.bn=running)
    "raw weights": "test_acc_online",
    "EMA (averaged BN buffers)": "test_acc_ema",
    "EMA + online model's BN buffers": "test_acc/ema/online_bn",
    "EMA + recalibrated BN": "test_acc/ema/recalibrate",
}
EXTRA = "[ema/online_bn,ema/recalibrate]"


def run_dir(root: Path, method: str, seed: int) -> Path:
    return root / f"{method}-s{seed}"


def run_all(args: argparse.Namespace, seeds: list[int], methods: list[str]) -> None:
    for seed in seeds:
        for method in methods:
            out = run_dir(args.runs, method, seed)
            if has_summary(out):
                continue
            config = load_config(
                args.config,
                [
                    f"seed={seed}",
                    f"select.method={method}",
                    f"train.epochs={args.epochs}",
                    "eval.bn=running",
                    f"eval.extra={EXTRA}",
                ],
            )
            print(f"training {method} seed {seed} -> {out}", flush=True)
            mode = "resume" if (out / CHECKPOINT).is_file() else "overwrite"
            train(config, out, mode=mode)


def table(args: argparse.Namespace, seeds: list[int], methods: list[str]) -> str:
    lines = [
        f"| method | evaluated | final acc | best acc | largest drop, epochs "
        f"{args.drop_from}-end |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        runs = []
        for seed in seeds:
            records = read_metrics(run_dir(args.runs, method, seed))
            if records:
                runs.append(records)
        if not runs:
            continue
        for label, key in VARIANTS.items():
            series = [np.array([r[key] for r in recs]) for recs in runs]
            epochs = [np.array([r["epoch"] for r in recs]) for recs in runs]
            final = np.mean([s[-1] for s in series])
            best = np.mean([s.max() for s in series])
            drops = [
                max(0.0, float(np.max(-np.diff(s[e >= args.drop_from]))))
                for s, e in zip(series, epochs, strict=True)
            ]
            lines.append(
                f"| {method} | {label} | {100 * final:.1f}% | {100 * best:.1f}% | "
                f"{100 * max(drops):.1f} pts |"
            )
    return "\n".join(lines) + f"\n\n(seeds {','.join(map(str, seeds))}; {len(seeds)} runs each)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion_mnist")
    parser.add_argument("--runs", type=Path, default=Path("runs/eval_variants"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="uniform,bayesian,rho_loss")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--drop-from", type=int, default=10)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    if not args.table_only:
        run_all(args, seeds, methods)
    print(table(args, seeds, methods))


if __name__ == "__main__":
    main()
