"""Every metric but the clock of 2-epoch tiny runs of every method (and of bayesian with each
offline predictor's cache), on synthetic Fashion-MNIST files: run it before and after a change
that must not change behaviour, and compare the two files byte for byte.

    python experiments/tiny_metrics.py /tmp/before.json      # on the old commit
    python experiments/tiny_metrics.py /tmp/after.json       # on the new one
    cmp /tmp/before.json /tmp/after.json

About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from jobs import bdsel_executable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_fashion_dir  # noqa: E402  (the tests' synthetic files)

from bdsel.rundir import METRICS  # noqa: E402

SETTINGS = [
    "seed=3", "train.epochs=2",
    "select.n_candidates=64", "select.n_selected=16", "eval.batch_size=128",
    "data.train_fraction=0.5",
    "data.noise.kind=symmetric", "data.noise.rate=0.2",
]  # fmt: skip
# the own settings of a method or predictor that the runs shorten
OWN = {
    "svp": ["select.epochs=1"], "holdout": ["zeroshot.epochs=2", "zeroshot.holdout_fraction=0.2"],
    "probe": ["zeroshot.epochs=2"],
    "crossfit": ["zeroshot.epochs=2", "zeroshot.channel_epochs=1"],
}  # fmt: skip
# run name -> the predictor whose cache it reads (None: none)
RUNS = {
    "uniform": None, "full": None, "train_loss": None, "grad_norm": None, "grad_norm_is": None,
    "svp": None, "infobatch": None, "irreducible_loss": "holdout", "rho_loss": "holdout",
    "bayesian": "holdout", "bayesian-probe": "probe", "bayesian-crossfit": "crossfit",
}  # fmt: skip
CLOCK = ("time", "seconds", "_s", "elapsed", "throughput", "per_s")


def without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if not any(c in k for c in CLOCK)}


def bdsel(*args: str) -> None:
    subprocess.run([bdsel_executable(), *args], check=True, capture_output=True)


def main() -> None:
    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_fashion_dir(Path(tmp) / "fashion")
        for name, predictor in RUNS.items():
            method = name.split("-")[0]
            sets = [*SETTINGS, f"data.root={root}", f"select.method={method}", *OWN.get(method, [])]
            if predictor:
                cache = Path(tmp) / f"{predictor}.h5"
                sets += [f"zeroshot.predictor={predictor}", f"zeroshot.cache={cache}"]
                sets += OWN[predictor]
                if not cache.exists():
                    bdsel("cache-zeroshot", "--config", "fashion_mnist", *_set(sets))
            run = Path(tmp) / "runs" / name
            bdsel("train", "--config", "fashion_mnist", "--run-dir", str(run), *_set(sets))
            lines = (run / METRICS).read_text().splitlines()
            out[name] = [without_clock(json.loads(line)) for line in lines]
            print(name, out[name][-1].get("test_acc"), flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True))


def _set(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


if __name__ == "__main__":
    main()
