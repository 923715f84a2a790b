"""What a stand-in predictor says about mislabeled points: log p_zs(observed label | x) on the
training points whose label is clean and on those whose label the noise changed.

The bayesian score subtracts the model's log-likelihood of the observed label from the
predictor's (``score ≈ (1 − α)·log p_zs(y|x) − (1 − α)·log p(y|x, model)`` when the posterior is
narrow): a mislabeled point outscores a clean one as soon as the model gives its label less
than the predictor does. A predictor fitted to noisy labels gives every mislabeled point about
the noise's own rate (log(0.2 / 9) ≈ −3.8 at 20% symmetric noise), however well it ranks them.

For each predictor setting: quantiles of log p_zs(y | x) on clean and on mislabeled points, and
the AUROC of ranking mislabeled points below clean ones (1: perfect; 0.5: chance). Reads the
same caches as ``bdsel train`` (make them first: ``bdsel cache-zeroshot``).

    python experiments/predictor_noise.py --out docs/results/offline/predictor_noise.md
    python experiments/predictor_noise.py --setting "crossfit T=0.5=zeroshot.predictor=crossfit,zeroshot.temperature=0.5"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bdsel.assemble import build_lookups
from bdsel.cleaning import clean_run_data
from bdsel.configure import load_config
from bdsel.data import derive_run_data, load_dataset

QUANTILES = (0.1, 0.5, 0.9)
CROSSFIT = "zeroshot.predictor=crossfit,select.method=bayesian"
SETTINGS = {
    "holdout (fitted T)": "zeroshot.predictor=holdout,select.method=bayesian",
    "crossfit (plain T)": f"{CROSSFIT},zeroshot.temperature=plain",
    "crossfit (denoised T)": CROSSFIT,
    "crossfit, T=0.5": f"{CROSSFIT},zeroshot.temperature=0.5",
    "crossfit, T=0.33": f"{CROSSFIT},zeroshot.temperature=0.33",
}


def auroc_lower(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(a positive's score < a negative's score), ties counting one half (Mann-Whitney U on
    average ranks). ``scores`` float [N], ``positive`` bool [N] with both classes present."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc_lower: need positives and negatives")
    s = scores.double()
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # average the ranks of tied values
    uniq, inverse = torch.unique(s, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.bincount(inverse, minlength=uniq.numel()).double()
    ranks = (sums / counts)[inverse]
    u_higher = ranks[positive].sum() - n_pos * (n_pos + 1) / 2  # pairs where positive is higher
    return float(1.0 - u_higher / (n_pos * n_neg))


def summarize(logprob: torch.Tensor, noisy: torch.Tensor) -> dict[str, object]:
    """Quantiles of ``logprob`` on clean and on noisy points, and the AUROC of noisy < clean."""
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    lp = logprob.double()
    return {
        "clean": lp[~noisy].quantile(q).tolist(),
        "noisy": lp[noisy].quantile(q).tolist(),
        "auroc": auroc_lower(lp, noisy),
    }


def label_logprobs(config_name: str, overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_zs(observed label | x) and the mislabeled mask over the training points a run
    draws from: those ``data.clean`` keeps, where the overrides set it."""
    config = load_config(config_name, overrides)
    data = derive_run_data(
        load_dataset(config.data), config.data, config.seed, config.holdout_fraction
    )
    kept = clean_run_data(config, data)
    lookups = build_lookups(("zs_logprobs",), config, data, torch.device("cpu"))
    idx = torch.as_tensor(kept.train_idx)
    return lookups["zs_logprobs"].label_logprob(idx, data.observed[idx]), data.noisy[idx]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="fashion_mnist")
    p.add_argument(
        "--setting",
        action="append",
        help="NAME=KEY=VALUE,KEY=VALUE (repeatable); default: holdout, crossfit at T plain/denoised/0.5/0.33",
    )
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = p.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting) if args.setting else SETTINGS
    head = ["predictor"] + [f"clean q{int(100 * q)}" for q in QUANTILES]
    head += [f"mislabeled q{int(100 * q)}" for q in QUANTILES] + ["AUROC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, overrides in settings.items():
        result = summarize(*label_logprobs(args.config, overrides.split(",")))
        cells = [f"{v:.2f}" for v in (*result["clean"], *result["noisy"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['auroc']:.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        text = (
            "# log p_zs(observed label | x) on the training points\n\n"
            f"`python experiments/predictor_noise.py --config {args.config}` (its noise and seed)."
            " Quantiles over the clean and over the mislabeled points; AUROC: how often a"
            " mislabeled point gets less than a clean one.\n\n" + table
        )
        args.out.write_text(text)


if __name__ == "__main__":
    main()
