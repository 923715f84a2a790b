"""What the ``probe`` predictor gives on the offline default, and what it costs: for each noise
setting, the cross-fitted probes on the pixels with and without the channel round, their
out-of-fold accuracy against the clean labels, their test accuracy, how they rank mislabeled
points (AUROC of log p(observed label) after the cache's noise-aware temperature), the median
log p of a mislabeled point's observed label, and the seconds (features, both rounds, and the
temperature fit with label noise) on one thread.

    python experiments/probe_quality.py --out docs/results/probe/probe_quality.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from predictor_noise import auroc_lower

from bdsel.calibration import fit_label_noise
from bdsel.configure import load_config
from bdsel.data import derive_run_data, load_dataset
from bdsel.predictors.features import pixel_features
from bdsel.predictors.probe import crossfit_probe

SETTINGS = {
    "20% symmetric": ("data.noise.kind=symmetric", "data.noise.rate=0.2"),
    "40% symmetric": ("data.noise.kind=symmetric", "data.noise.rate=0.4"),
    "30% pairflip": ("data.noise.kind=pairflip", "data.noise.rate=0.3"),
}
CHANNELS = ("none", "auto")


def measure(overrides: tuple[str, ...], channel: str) -> dict[str, float]:
    config = load_config("fashion_mnist", list(overrides))
    dataset = load_dataset(config.data)
    data = derive_run_data(dataset, config.data, config.seed, config.holdout_fraction)
    rows = data.train_idx
    observed, clean = data.observed[rows], dataset.train.labels[rows]
    p = config.zeroshot.settings
    t0 = time.perf_counter()
    fit = crossfit_probe(pixel_features(dataset, "train", rows), observed, dataset.n_classes,
                         folds=p.folds, epochs=p.epochs, channel=channel,
                         seed=config.seed)  # fmt: skip
    noise_fit = fit_label_noise(fit.logprobs, observed)
    seconds = time.perf_counter() - t0
    lp = torch.log_softmax(fit.logprobs.double() / noise_fit.temperature, dim=1)
    lp_observed = lp.gather(1, observed[:, None]).squeeze(1)
    noisy = observed != clean
    test = fit.predict(pixel_features(dataset, "test", torch.arange(len(dataset.test))))
    return {
        "seconds": seconds,
        "oof_acc": float((fit.logprobs.argmax(1) == clean).float().mean()),
        "test_acc": float((test.argmax(1) == dataset.test.labels).float().mean()),
        "auroc": auroc_lower(lp_observed, noisy),
        "median_noisy": float(lp_observed[noisy].median()),
        "median_clean": float(lp_observed[~noisy].median()),
        "channel": fit.channel or "-",
    }


def table(results: dict[tuple[str, str], dict[str, float]]) -> str:
    lines = [
        "| noise | channel round | seconds | out-of-fold acc (clean labels) | test acc | AUROC "
        "flagging mislabeled | median log p, mislabeled / clean | channel used |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (setting, channel), r in results.items():
        lines.append(
            f"| {setting} | {channel} | {r['seconds']:.1f} | {r['oof_acc']:.1%} | "
            f"{r['test_acc']:.1%} | {r['auroc']:.3f} | {r['median_noisy']:.2f} / "
            f"{r['median_clean']:.2f} | {r['channel']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {(s, c): measure(o, c) for s, o in SETTINGS.items() for c in CHANNELS}
    text = table(results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
