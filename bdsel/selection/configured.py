"""The one place a run's :class:`~bdsel.config.Config` maps onto a selection method's settings.

Every method takes keyword settings (``create_selector(name, **settings)``); ``bdsel train``
builds its selector here from ``select.*`` (by name), ``train.epochs``, the run's per-index
tables and the model's feature width, passing each method the settings its constructor names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import bdsel.selection.svp as svp
from bdsel.selection.base import Selector, SelectorContext
from bdsel.selection.registry import create_selector, selector_class, selector_settings


def config_settings(context: SelectorContext, method: str | None = None) -> dict[str, Any]:
    """Every setting ``method`` (default: the config's) may take, from ``context``: it gets
    the ones its constructor names (:func:`selector_from_config`). A ``select.*`` setting, the
    method's own (its ``Settings``: the config's, or its defaults for a method the config does
    not name) or one every method shares, reaches the constructor argument of its name
    (``select.alpha`` -> ``alpha``): a new setting is a field and an argument, nothing in
    between. The run's own (seed, epochs, the tables, the feature width, the device) take
    precedence."""
    config, s = context.config, context.config.select
    own = _own_settings(s, method or s.method)
    shared = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "settings"}
    settings: dict[str, Any] = {
        **own,
        **shared,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "n_features": context.n_features,
        "device": context.device,
        **context.lookups,  # zs_logprobs, il_logprobs
    }
    extras = context.extras
    if "data" in extras:
        settings["n_rows"] = int(extras["data"].observed.shape[0])
    if "data" in extras and "source" in extras:
        settings["build_coreset"] = lambda: _svp_coreset(context)
    return settings


def _own_settings(select: Any, method: str) -> dict[str, Any]:
    cls = selector_class(method).Settings
    if cls is None:
        return {}
    return dataclasses.asdict(select.settings if isinstance(select.settings, cls) else cls())


def _svp_coreset(context: SelectorContext):
    extras = context.extras
    return svp.build_coreset(context.config, extras["data"], extras["source"], context.device)


def selector_from_config(name: str, context: SelectorContext) -> Selector:
    """The selector ``name`` (normally ``config.select.method``) with its settings from
    ``context``; a per-index table the method needs but the context lacks is a ValueError."""
    accepted = selector_settings(name)
    settings = config_settings(context, name)
    missing = [k for k in accepted if k in ("zs_logprobs", "il_logprobs") and k not in settings]
    if missing:
        raise ValueError(f"select.method={name} needs {', '.join(missing)}")
    return create_selector(name, **{k: v for k, v in settings.items() if k in accepted})
