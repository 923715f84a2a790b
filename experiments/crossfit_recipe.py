"""Screening the crossfit predictor's fold models one at a time (issue 25's next levers).

A whole crossfit cache costs about ten minutes per core; this trains one fold model of it, as
``bdsel cache-zeroshot`` would (same folds, initialisation, data order and augmentation as
the cache's model 1), and reports what the bayesian score reads from it: accuracy against the
clean labels on the fold it predicts and on the test set, and the median log-prob of a
mislabeled point's observed label (before any temperature).

    # a second-round model through a symmetric channel of rate 0.426, 20 epochs
    python experiments/crossfit_recipe.py fold --rate 0.4 --eps 0.426 --epochs 20
    # a first-round model (plain cross-entropy) and the anchor-point channel its
    # out-of-fold probabilities estimate, with how concentrated each row's off-diagonal is
    python experiments/crossfit_recipe.py anchor --rate 0.3 --kind pairflip

One JSON line per run on stdout (the anchor command prints its channel after it).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from bdsel.calibration import fit_label_noise
from bdsel.configure import load_config
from bdsel.data import derive_run_data, load_dataset
from bdsel.data.noise_channel import anchor_transition, forward_loss, symmetric_channel
from bdsel.evaluation import predict_logprobs
from bdsel.fit import fit_supervised
from bdsel.optim import build_optimizer
from bdsel.predictors.crossfit import CrossfitPredictor
from bdsel.predictors.crossfit_fit import fold_seed
from bdsel.predictors.holdout import as_train_config, training_source


def fit_fold_model(args: argparse.Namespace) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Model 1 of the cache (fold 0's: trained on the other folds), as the predictor builds
    and trains it: what it predicts, its log-probs of fold 0 and fold 0's observed labels."""
    cfg = load_config("fashion_mnist", [
        f"data.noise.kind={args.kind}", f"data.noise.rate={args.rate}",
        "zeroshot.predictor=crossfit", f"zeroshot.lr={args.lr}", f"zeroshot.folds={args.folds}",
    ])  # fmt: skip
    ds = load_dataset(cfg.data)
    data = derive_run_data(ds, cfg.data, cfg.seed, cfg.holdout_fraction)
    source = training_source(cfg, data, torch.device("cpu"))
    fit = CrossfitPredictor(cfg, data, source).crossfit  # the folds and fold 0's initial model
    c = cfg.zeroshot.settings
    if args.what == "anchor" or args.eps is None:
        loss = F.cross_entropy
    else:
        loss = forward_loss(symmetric_channel(args.eps, ds.n_classes))
    start = time.perf_counter()
    model = fit_supervised(
        fit.models[0], source, fit.training_rows(0), data.observed,
        epochs=args.epochs, batch_size=c.batch_size,
        optimizer=build_optimizer(fit.models[0], as_train_config(cfg, c)),
        seed=fold_seed(cfg.seed, 0), ema_decay=cfg.train.ema_decay, schedule=c.schedule,
        loss=loss,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    rows = fit.folds[0]
    lp = predict_logprobs(model, source, "train", rows, 512)
    test = predict_logprobs(model, source, "test", torch.arange(len(ds.test.labels)), 512)
    clean, observed = ds.train.labels[rows], data.observed[rows]
    mislabeled = observed != clean
    observed_lp = lp.gather(1, observed[:, None]).squeeze(1)
    out = {
        **vars(args), "fit_s": round(seconds, 1),
        "fold_clean_acc": round(float((lp.argmax(1) == clean).float().mean()), 4),
        "test_acc": round(float((test.argmax(1) == ds.test.labels).float().mean()), 4),
        "mislabeled_q50": round(float(observed_lp[mislabeled].median()), 3),
        "clean_q10": round(float(observed_lp[~mislabeled].quantile(0.1)), 3),
    }  # fmt: skip
    return out, lp, observed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("fold", "anchor"))
    p.add_argument("--rate", type=float, default=0.4)
    p.add_argument("--kind", default="symmetric")
    p.add_argument("--eps", type=float, help="fold: a symmetric channel's rate (none: plain CE)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--folds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    out, lp, observed = fit_fold_model(args)
    if args.what == "fold":
        print(json.dumps(out), flush=True)
        return
    t = anchor_transition(lp.double().exp())
    off = t.clone().fill_diagonal_(0)
    fit = fit_label_noise(lp, observed)
    out |= {
        "anchor_noise": round(float(1 - t.diagonal().mean()), 4),
        "off_diagonal_concentration": [round(float(v), 3) for v in off.max(1).values / off.sum(1)],
        "fit_label_noise": [fit.model, round(fit.noise_rate, 4), round(fit.temperature, 3)],
    }  # fmt: skip
    print(json.dumps(out), flush=True)
    print(t.numpy().round(3))


if __name__ == "__main__":
    main()
