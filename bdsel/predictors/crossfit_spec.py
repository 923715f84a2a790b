"""What the ``crossfit`` predictor's cache records of it: the settings that shape its outputs
(its spec, and so its cache's name) and the rows the CLI prints of a made cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bdsel.config import Config
from bdsel.predictors.holdout import fit_settings
from bdsel.predictors.registry import channel_rows


def crossfit_settings(config: Config) -> dict[str, Any]:
    """The settings that shape its outputs, as its spec names them."""
    settings = fit_settings("crossfit", config, config.zeroshot.crossfit)
    c = config.zeroshot.crossfit
    # Left out where they do nothing, or at the value they had before they were settings:
    # the caches made then keep matching.
    if not c.channel_round:
        del settings["channel_folds"], settings["channel_epochs"], settings["channel"]
        del settings["refit_init"]
    else:
        if c.refit_init == "fresh":
            del settings["refit_init"]
        if c.channel_folds == c.folds:
            del settings["channel_folds"]
        if c.channel_epochs == c.epochs:
            del settings["channel_epochs"]
        if c.channel == "anchor":
            del settings["channel"]
    if settings["rounds"] == 1:
        del settings["rounds"], settings["refit_filter"], settings["refit"]
    elif settings["refit"] == "trusted":
        del settings["refit"]
    if c.cleaned:  # which cleaning left the rows it trains on (their hash is checked too)
        clean = config.data.clean
        settings["cleaned"] = {"by": Path(clean.cache).name, "filter_by": clean.filter_by}
    else:
        del settings["cleaned"]
    return settings


def crossfit_summary_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """What its spec says about its fit, as the CLI prints it."""
    rows = []
    if spec.get("fold_accuracy"):
        accs = ", ".join(f"{a:.2%}" for a in spec["fold_accuracy"])
        rows.append(("held-out fold accuracy (observed labels)", accs))
        rows.append(("epochs per fold (kept)", ", ".join(map(str, spec["fold_epochs"]))))
    if spec.get("refit_skipped"):
        why = (
            "the estimated noise channel leaves a class unidentifiable"
            if "refit_noise" in spec
            else "cleanlab trusted too few points to refit on"
        )
        return [*rows, ("refit round", f"skipped: {why}")]
    if spec.get("refit_points"):
        rows.append(("refit round trained on (trusted points)", f"{spec['refit_points']:,}"))
    return rows + channel_rows(spec, "the anchor points' rate")
