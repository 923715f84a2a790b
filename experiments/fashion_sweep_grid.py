"""What every phase of experiments/fashion_sweep.py shares: the methods, the tuning grid, and
one run of bdsel train."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bdsel.configure import load_config
from bdsel.rundir import (
    acc_key,
    has_summary,
    read_metrics,
    read_summary,
)
from bdsel.train import train

METHODS = (
    "uniform",
    "train_loss",
    "grad_norm",
    "grad_norm_is",
    "svp",
    "irreducible_loss",
    "rho_loss",
    "bayesian",
)

CONFIG = "fashion_mnist"
# The sweep ran with the hold-out predictor, the config's default until 2026-12-07.
PINNED = ["zeroshot.predictor=holdout"]

# The paper's CIFAR-10 values (alpha, prior precision, n_effective) start the search; the
# temperature is not searched: `auto` fits it on labels the predictor never trained on.
START = {
    "select.alpha": 0.2,
    "select.n_effective": 200.0,
    "select.prior_precision": 10.0,
}

GRID = {
    "select.alpha": [0.1, 0.2, 0.4],
    "select.n_effective": [50.0, 200.0, 1000.0],
    "select.prior_precision": [1.0, 10.0, 100.0],
}


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def run_once(run_dir: Path, values: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """Train one run unless it already finished; return its summary."""
    summary = read_summary(run_dir)
    if summary is not None:
        return summary
    config = load_config(CONFIG, [*PINNED, *overrides(values)])
    t0 = time.perf_counter()
    mode = "overwrite" if run_dir.exists() else "new"
    summary = train(config, run_dir, mode=mode, dataset=dataset)
    log(f"{run_dir}: {time.perf_counter() - t0:.0f} s, " + _brief(summary))
    return summary


def _brief(summary: dict[str, Any]) -> str:
    acc = summary.get("final_test_acc", summary.get("final_val_acc"))
    return f"final acc {acc:.4f}"


def validation_summary(run_dir: Path) -> dict[str, float]:
    """A tuning run's final validation accuracy (of the evaluated, EMA, weights) and its mean
    over the evaluated epochs (the area under the curve)."""
    metrics, key = read_metrics(run_dir), acc_key("validation")
    return {
        "val_acc_final": metrics[-1][key],
        "val_acc_mean": float(np.mean([r[key] for r in metrics])),
    }


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_all(jobs: list[tuple[Path, dict[str, Any]]], n_jobs: int, dataset: Any) -> None:
    """Train every (run_dir, values) not yet finished: in this process, or ``n_jobs`` at a time
    in worker processes of one thread each (one per core: more threads than cores slow every
    run tenfold)."""
    todo = [(d, v) for d, v in jobs if not has_summary(d)]
    if n_jobs <= 1 or len(todo) <= 1:
        for run_dir, values in todo:
            run_once(run_dir, values, dataset)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    os.environ["OMP_NUM_THREADS"] = "1"  # the workers' torch reads it at import
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_one_thread) as pool:
        for future in [pool.submit(run_once, d, v, None) for d, v in todo]:
            future.result()
