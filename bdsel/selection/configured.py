"""The one place a run's :class:`~bdsel.config.Config` maps onto a selection method's settings.

Every method takes keyword settings (``create_selector(name, **settings)``); ``bdsel train``
builds its selector here from ``select.*``, ``train.epochs``, the run's per-index tables and
the model's feature width, passing each method the settings its constructor names.
"""

from __future__ import annotations

from typing import Any

import bdsel.selection.svp as svp
from bdsel.selection.base import Selector, SelectorContext
from bdsel.selection.registry import create_selector, selector_settings


def config_settings(context: SelectorContext) -> dict[str, Any]:
    """Every setting a registered method may take, from ``context``: each method gets the
    ones its constructor names (:func:`selector_from_config`)."""
    config, s = context.config, context.config.select
    settings: dict[str, Any] = {
        "n_selected": s.n_selected,
        "seed": config.seed,
        "warmup_epochs": s.warmup_epochs,
        "anneal": s.anneal,
        "epochs": config.train.epochs,
        # bayesian
        "n_features": context.n_features,
        "alpha": s.alpha,
        "n_samples": s.n_samples,
        "prior_precision": s.prior_precision,
        "n_effective": s.n_effective,
        "momentum": s.momentum,
        "fisher": s.fisher,
        "adaptive_alpha": s.adaptive_alpha,
        "shared_noise": s.shared_noise,
        "device": context.device,
        # infobatch
        "prune_ratio": s.infobatch.prune_ratio,
        "delta": s.infobatch.delta,
        **context.lookups,  # zs_logprobs, il_logprobs
    }
    extras = context.extras
    if "data" in extras:
        settings["n_rows"] = int(extras["data"].observed.shape[0])
    if "data" in extras and "source" in extras:
        settings["build_coreset"] = lambda: _svp_coreset(context)
    return settings


def _svp_coreset(context: SelectorContext):
    extras = context.extras
    return svp.build_coreset(context.config, extras["data"], extras["source"], context.device)


def selector_from_config(name: str, context: SelectorContext) -> Selector:
    """The selector ``name`` (normally ``config.select.method``) with its settings from
    ``context``; a per-index table the method needs but the context lacks is a ValueError."""
    accepted = selector_settings(name)
    settings = config_settings(context)
    missing = [k for k in accepted if k in ("zs_logprobs", "il_logprobs") and k not in settings]
    if missing:
        raise ValueError(f"select.method={name} needs {', '.join(missing)}")
    return create_selector(name, **{k: v for k, v in settings.items() if k in accepted})
