"""How long the crossfit channel round must train: the noise channel its out-of-fold
probabilities give, against the channel the labels were drawn through, for each length.

The channel round (``zeroshot.crossfit.channel_epochs``, 8 by default) is 18% of a crossfit
cache's training steps. For each noise setting and each length it trains that round alone
(fold 0's model, seed 0, on the other fold's observed labels) and reports, for the channel
the refit would train through:

- auto: ``choose_channel`` of the anchor-point matrix (the shipped estimate; at symmetric
  noise the rate is the anchor diagonal's, which counts the model's own confusions as noise);
- fitted: the same choice with the symmetric rate fitted by likelihood, with a temperature,
  to the fold's observed labels (the retired ``zeroshot.crossfit.channel: fitted``).

Each row: the chosen kind, the estimated noise rate (1 − mean diagonal), the true rate, the
mean L1 distance of a row of the estimate from the true channel (the clean → observed counts
of fold 0), and whether the estimate is identifiable (else the refit is skipped).

    python experiments/channel_round.py                 # run what is missing, then report
    python experiments/channel_round.py --phase report
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from jobs import experiment_main, run_pool

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "holdout_free"
SETTINGS = {
    "n20": ("20% symmetric", ()),
    "n40": ("40% symmetric", ("data.noise.rate=0.4",)),
    "p30": ("30% pairflip", ("data.noise.kind=pairflip", "data.noise.rate=0.3")),
}
LENGTHS = (2, 3, 4, 8)


def estimate(setting: str, epochs: int) -> dict:
    """Train one channel round of ``epochs`` and compare its channels with the true one."""
    from bdsel.calibration import fit_temperature_and_noise
    from bdsel.configure import load_config
    from bdsel.data import derive_run_data, load_dataset
    from bdsel.data.noise_channel import anchor_transition, choose_channel, identifiable
    from bdsel.predictors.crossfit import CrossfitPredictor

    overrides = ["seed=0", *SETTINGS[setting][1], "zeroshot.predictor=crossfit",
                 f"zeroshot.crossfit.channel_epochs={epochs}"]  # fmt: skip
    cfg = load_config("fashion_mnist", overrides)
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    fit = CrossfitPredictor.from_config(cfg, data, torch.device("cpu")).crossfit
    fit._fit_round(None, range(len(fit.models)))  # the channel round only
    rows, probs = fit._out_of_fold()
    n = data.dataset.n_classes
    true = torch.zeros(n, n, dtype=torch.float64)
    true.index_put_((data.clean[rows], data.observed[rows]), torch.ones(len(rows)).double(), True)
    true /= true.sum(1, keepdim=True)
    anchor = anchor_transition(probs)
    # the symmetric rate of most likelihood of the observed labels, with a temperature: what
    # the retired ``channel: fitted`` trained through
    fitted = fit_temperature_and_noise(probs.clamp_min(1e-300).log(), data.observed[rows])[1]
    out = {"setting": setting, "epochs": epochs, "true_rate": float(1 - true.diagonal().mean())}
    for name, rate in (("auto", None), ("fitted", fitted)):
        kind, t = choose_channel(anchor, rate)
        out[name] = {"kind": kind, "rate": float(1 - t.diagonal().mean()),
                     "l1": float((t - true).abs().sum(1).mean()), "identifiable": identifiable(t)}  # fmt: skip
    return out


def run_missing(args: argparse.Namespace) -> None:
    jobs = []
    for setting in SETTINGS:
        if not (args.runs / f"{setting}.json").exists():
            cmd = [sys.executable, __file__, "--config", "fashion_mnist", "--worker", setting]
            jobs.append((f"channel_{setting}", [*cmd, "--runs", str(args.runs)]))
    run_pool(jobs, args.runs, args.jobs)


def report(args: argparse.Namespace) -> None:
    lines = [
        f"# How long the channel round must train ({datetime.date.today()})",
        "",
        "`python experiments/channel_round.py`: the channel round alone (fold 0's model, seed 0),"
        " for each length; the channel a forward refit would train through, against the one"
        " the labels were drawn through (fold 0's clean → observed counts). L1: the mean L1"
        " distance of a row from the true channel's. auto: the shipped estimate (the anchor"
        " diagonal's rate at symmetric noise); fitted: `zeroshot.crossfit.channel: fitted`.",
        "",
        "| noise | channel epochs | true rate | auto: kind, rate, L1 | fitted: kind, rate, L1 |",
        "|---|---|---|---|---|",
    ]
    for setting, (label, _) in SETTINGS.items():
        path = args.runs / f"{setting}.json"
        if not path.exists():
            continue
        for r in json.loads(path.read_text()):
            cells = [
                f"{r[k]['kind']}, {r[k]['rate']:.3f}, {r[k]['l1']:.3f}"
                + ("" if r[k]["identifiable"] else " (not identifiable: no refit)")
                for k in ("auto", "fitted")
            ]
            lines.append(
                f"| {label} | {r['epochs']} | {r['true_rate']:.3f} | {' | '.join(cells)} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channel_round.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if "--worker" in sys.argv:  # one setting, every length: run_pool's job
        p = argparse.ArgumentParser()
        p.add_argument("--worker", choices=list(SETTINGS))
        p.add_argument("--config")
        p.add_argument("--runs", type=Path)
        args = p.parse_args()
        torch.set_num_threads(1)
        found = [estimate(args.worker, e) for e in LENGTHS]
        (args.runs / f"{args.worker}.json").write_text(json.dumps(found, indent=1))
        return
    experiment_main(__doc__, "runs/channel_round", str(RESULTS), run_missing, report)


if __name__ == "__main__":
    main()
