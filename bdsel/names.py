"""The names a config gives, checked against the registries that own them.

``bdsel.config`` imports nothing from bdsel (every module may import it), so it cannot know
which selection methods, models, datasets and zero-shot predictors are registered. This
check runs where they are created: the CLI calls it right after loading a config, and
``build_run`` / ``cache_zeroshot`` before any heavy work.
"""

from __future__ import annotations

from bdsel.config import Config, ConfigError
from bdsel.data import list_datasets
from bdsel.models import list_models
from bdsel.predictors import list_predictors
from bdsel.selection import list_selectors


def model_keys(config: Config) -> list[str]:
    """The keys that name a registered model: ``model.name``, and those the method's and the
    predictor's settings declare (their ``MODEL_FIELDS``)."""
    keys = ["model.name"]
    for section in ("select", "zeroshot"):
        own = getattr(config, section).settings
        keys += [f"{section}.{name}" for name in getattr(own, "MODEL_FIELDS", ())]
    return keys


def check_names(config: Config) -> None:
    """Raise ConfigError naming the key of the first unregistered name, and the valid ones."""

    def need(key: str, what: str, valid: list[str]) -> None:
        value = config.get(key)
        if value not in valid:
            raise ConfigError(f"{key}: unknown {what} {value!r}; valid: {', '.join(valid)}")

    need("select.method", "method", list_selectors())
    for key in model_keys(config):
        need(key, "model", list_models())
    need("data.name", "dataset", list_datasets())
    need("zeroshot.predictor", "predictor", list_predictors())
