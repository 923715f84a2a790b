"""The names a config gives, checked against the registries that own them.

``bdsel.config`` imports nothing from bdsel (every module may import it), so it cannot know
which selection methods, models, datasets and zero-shot predictors are registered. This
check runs where they are created: the CLI calls it right after loading a config, and
``build_run`` / ``cache_zeroshot`` before any heavy work.
"""

from __future__ import annotations

from bdsel.config import Config, ConfigError
from bdsel.config.schema import OWNED
from bdsel.configure import settings_of
from bdsel.models import list_models


def model_keys(config: Config) -> list[str]:
    """The keys that name a registered model: ``model.name``, and those the owners' settings
    declare (their ``MODEL_FIELDS``: the proxy's, a trained predictor's)."""
    keys = ["model.name"]
    for section in OWNED:
        own = getattr(config, section).settings
        keys += [f"{section}.{name}" for name in getattr(own, "MODEL_FIELDS", ())]
    return keys


def check_names(config: Config) -> None:
    """Raise ConfigError naming the key of the first unregistered name, and the valid ones:
    the owners' (dataset, schedule, method, predictor) as loading checks them, then models."""
    for section, key in OWNED.items():
        settings_of(section, config.get(f"{section}.{key}"))
    valid = list_models()
    for key in model_keys(config):
        if (value := config.get(key)) not in valid:
            raise ConfigError(f"{key}: unknown model {value!r}; valid: {', '.join(valid)}")
