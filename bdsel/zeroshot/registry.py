"""Zero-shot predictors by name: ``register_predictor``, ``create_predictor``, ``list_predictors``.

A predictor is one file holding a class registered under the name ``zeroshot.predictor``
selects, with:

- ``section``: the config section that holds its settings (``zeroshot.holdout``, ...);
- ``cache_stem(config)``: the default cache file name, ``cache/<stem>.h5``, which must change
  whenever a setting that changes its outputs does;
- ``from_config(config, data, device)`` (classmethod): the predictor for a run's dataset;
- ``logprobs(split, rows)``: log p(c | x) for ``rows`` (int64 [n]) of ``split`` ("train" or
  "test") -> float32 [n, C] on the CPU;
- ``spec()``: what identifies its outputs, stored in and checked against the cache; its
  ``kind`` is the registered name;
- ``settings(config)`` (static): the config's settings that shape its outputs, as ``spec``
  names them: ``train`` refuses a cache whose spec differs, and the default cache name
  carries their hash. An optional ``expected_spec(config, data)`` adds dataset-dependent
  keys (CLIP's prompts).

A predictor that trains may add ``fit_or_load(weights, progress=None)`` and ``describe()``:
``cache-zeroshot`` says what it trains, calls it first and keeps the weights beside an
unfinished cache, so a resume continues with the very model that wrote the first rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from bdsel.config import Config
    from bdsel.data import RunData


@dataclass(frozen=True)
class PredictorEntry:
    name: str
    cls: type
    section: str  # dotted config section of its settings
    cache_stem: Callable[[Config], str]


_REGISTRY: dict[str, PredictorEntry] = {}


def register_predictor(
    name: str, *, section: str, cache_stem: Callable[[Config], str]
) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"predictor {name!r} is already registered")
        for method in ("from_config", "settings", "logprobs", "spec"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"predictor {name!r}: {cls.__name__} has no {method}()")
        cls.name = name
        _REGISTRY[name] = PredictorEntry(name, cls, section, cache_stem)
        return cls

    return deco


def list_predictors() -> list[str]:
    return sorted(_REGISTRY)


def predictor_entry(name: str) -> PredictorEntry:
    if name not in _REGISTRY:
        raise ValueError(
            f"zeroshot.predictor: unknown predictor {name!r}; valid: {', '.join(list_predictors())}"
        )
    return _REGISTRY[name]


def create_predictor(config: Config, data: RunData, device: torch.device) -> Any:
    """The predictor ``config.zeroshot.predictor`` names, for ``data``'s dataset on ``device``."""
    return predictor_entry(config.zeroshot.predictor).cls.from_config(config, data, device)
