"""The job runner every experiment script shares: ``bdsel`` commands, a few at a time, each
pinned to its own core with one thread (two torch processes with default threads on a
2-core machine slow each other by 10-30x), output to <runs>/logs/<name>.txt."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The studies of docs/results ran the offline config with the hold-out predictor, its
# default until `probe` became it (2026-12-07): their commands and cache paths pin it first
# (a later zeroshot.predictor override still wins).
HOLDOUT = "zeroshot.predictor=holdout"


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def bdsel_executable() -> str:
    """The bdsel command: on the PATH, or beside this interpreter (a venv not activated)."""
    return shutil.which("bdsel") or str(Path(sys.executable).parent / "bdsel")


def copy_records(runs: Path, names: list[str], out: Path) -> None:
    """The records behind a table: each finished run's config, metrics and summary, copied
    to <out>/runs/<name>/ (the run directories themselves stay under ``runs``)."""
    from bdsel.rundir import CONFIG, METRICS, SUMMARY, has_summary

    for name in names:
        if has_summary(runs / name):
            (out / "runs" / name).mkdir(parents=True, exist_ok=True)
            for file in (CONFIG, METRICS, SUMMARY):
                shutil.copyfile(runs / name / file, out / "runs" / name / file)


def held_slots(runs: Path) -> set[int]:
    """The cores <runs>/hold names (whitespace-separated): left free for other work (a test
    run beside the experiments is then one more single-thread process on its own core)."""
    try:
        return {int(x) for x in (runs / "hold").read_text().split()}
    except (FileNotFoundError, ValueError):
        return set()


def run_pool(jobs: list[tuple[str, list[str]]], runs: Path, n_jobs: int) -> dict[str, float]:
    """Run (log name, command) pairs ``n_jobs`` at a time, each pinned to its own core with one
    thread; output goes to <runs>/logs/<name>.txt. Stops at the first failure. Returns each
    job's wall-clock seconds. A core named in <runs>/hold gets no new job while it is there."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    todo, free, running = list(jobs), list(range(n_jobs)), {}
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= n_jobs
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    while todo or running:
        held = held_slots(runs)
        while todo and (ready := [c for c in free if c not in held]):
            slot = ready[0]
            free.remove(slot)
            name, cmd = todo.pop(0)
            cmd = ["taskset", "-c", str(slot), *cmd] if pin else cmd
            out = open(runs / "logs" / f"{name}.txt", "w")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            running[proc] = (name, slot, out, time.time())
            log(f"start {name}: {' '.join(cmd[cmd.index('--config') - 1 :])}")
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            name, slot, out, t0 = running.pop(proc)
            out.close()
            free.append(slot)
            seconds[name] = time.time() - t0
            log(f"{name}: exit {proc.returncode} after {seconds[name]:.0f} s")
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: see {runs / 'logs' / (name + '.txt')}")
    return seconds


def experiment_main(
    doc: str | None,
    runs: str,
    out: str,
    run_missing: Callable[[argparse.Namespace], None],
    report: Callable[[argparse.Namespace], None],
) -> None:
    """The command line every experiment script has: --runs, --out, --phase (run what is
    missing, then report), --jobs, --only and --skip."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=Path, default=Path(runs))
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--phase", choices=["all", "run", "report"], default="all")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    p.add_argument("--only", default="", help="only these runs: names or patterns, comma-separated")
    p.add_argument("--skip", default="", help="runs not to start (e.g. running elsewhere)")
    args = p.parse_args()
    if args.phase in ("all", "run"):
        run_missing(args)
    if args.phase in ("all", "report"):
        report(args)
