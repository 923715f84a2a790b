"""A run's Config, its owned sections resolved through the registries that own them.

``data``, ``train``, ``select`` and ``zeroshot`` hold, beside their own keys, the settings of
what they name: ``data.train_list`` is the ``imagefolder`` dataset's, ``train.step_gamma``
the ``step`` schedule's, ``select.alpha`` the ``bayesian`` method's, ``zeroshot.folds`` the
``probe`` predictor's. Each declares them as a ``Settings``
dataclass beside its class or loader, with its ranges beside the fields, so adding a setting
is one field there. The config package below cannot import the registries; this module,
above both, can.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from bdsel.config import Config, ConfigError, TrainConfig, build_config, merged_values
from bdsel.config.schema import OWNED
from bdsel.data import dataset_entry, list_datasets
from bdsel.optim import SCHEDULE_SETTINGS
from bdsel.predictors import list_predictors, predictor_entry
from bdsel.selection import list_selectors, selector_class


def settings_of(section: str, name: str) -> type | None:
    """The ``Settings`` class of the dataset (``section="data"``), learning-rate schedule
    (``"train"``), method (``"select"``) or predictor (``"zeroshot"``) ``name``; None for one
    without settings of its own; an unknown name is a ConfigError naming the key and the valid
    names."""
    if section == "train":
        schedules = typing.get_args(typing.get_type_hints(TrainConfig)["schedule"])
        if name not in schedules:
            raise ConfigError(
                f"train.schedule: expected one of {', '.join(map(repr, schedules))}, got {name!r}"
            )
        return SCHEDULE_SETTINGS.get(name)
    key, what, valid = {
        "data": ("data.name", "dataset", list_datasets),
        "select": ("select.method", "method", list_selectors),
        "zeroshot": ("zeroshot.predictor", "predictor", list_predictors),
    }[section]
    if name not in valid():
        raise ConfigError(f"{key}: unknown {what} {name!r}; valid: {', '.join(valid())}")
    if section == "data":
        return dataset_entry(name).settings
    cls = selector_class(name) if section == "select" else predictor_entry(name).cls
    return getattr(cls, "Settings", None)


def load_config(
    name_or_path: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> Config:
    """A validated Config from a YAML file (or a shipped config's name), a dict and
    ``key.path=value`` overrides, in that order of precedence; nothing given: the defaults."""
    try:
        return build_config(merged_values(name_or_path, overrides, values), settings_of)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_whose(str(exc))}") from None


def _whose(message: str) -> str:
    """For an unknown key that is another dataset's, method's or predictor's own: whose it is."""
    key = message.removeprefix("unknown key ").split(";")[0].split(" ")[0]
    section, _, name = key.partition(".")
    if not message.startswith("unknown key ") or section not in OWNED or "." in name:
        return ""
    owners = [o for o, cls in owned_settings()[section].items() if name in _field_names(cls)]
    if not owners:
        return ""
    owner_key = OWNED[section]
    return (
        f"; {key} is the own setting of {section}.{owner_key}={' or '.join(owners)} (a file "
        f"meant for several puts it under its name: {section}.{owners[0]}.{name})"
    )


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def owned_settings() -> dict[str, dict[str, type]]:
    """Every registered dataset's, method's and predictor's ``Settings`` (none for one
    without), by section: what ``bdsel.config.reference`` lists beside the Config's own keys."""
    return {
        "data": {n: c for n in list_datasets() if (c := settings_of("data", n))},
        "train": dict(SCHEDULE_SETTINGS),
        "select": {n: c for n in list_selectors() if (c := settings_of("select", n))},
        "zeroshot": {n: c for n in list_predictors() if (c := settings_of("zeroshot", n))},
    }


def defaults_like(config: Config) -> dict[str, Any]:
    """The defaults as config.yaml would hold them, with the own settings of ``config``'s
    dataset, method and predictor (at their defaults) in place of the default owners': what a
    config's changes are measured against (the owner keys themselves at their defaults)."""
    default = Config()
    owners = {s: {key: config.get(f"{s}.{key}")} for s, key in OWNED.items()}
    out = load_config(values=owners).to_dict()
    for section, key in OWNED.items():
        out[section][key] = default.get(f"{section}.{key}")
    return out
