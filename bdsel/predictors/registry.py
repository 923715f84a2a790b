"""Zero-shot predictors by name: ``register_predictor``, ``create_predictor``, ``list_predictors``.

A predictor is one file holding a class registered under the name ``zeroshot.predictor``
selects, with:

- ``Settings``: its settings dataclass (ranges beside the fields), set as ``zeroshot.<key>``
  when ``zeroshot.predictor`` names it (``bdsel.configure``); a cache whose spec names a
  setting of it that ``settings(config)`` leaves out is refused;
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bdsel.registry import Registry

if TYPE_CHECKING:
    import torch

    from bdsel.config import Config
    from bdsel.data import RunData


@runtime_checkable
class Predictor(Protocol):
    """What every registered predictor class provides (checked when it registers; the
    registry sets its ``name``)."""

    @classmethod
    def from_config(cls, config: Config, data: RunData, device: torch.device) -> Predictor: ...

    @staticmethod
    def settings(config: Config) -> dict[str, Any]: ...

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor: ...

    def spec(self) -> dict[str, Any]: ...


@runtime_checkable
class TrainedPredictor(Protocol):
    """A predictor that trains before it predicts (``cache-zeroshot`` fits it first)."""

    def fit_or_load(self, weights: Path, progress: Any = None) -> None: ...

    def describe(self) -> str: ...


@runtime_checkable
class CalibratedPredictor(Protocol):
    """A predictor with a calibration split: (log-probs [n, C], labels [n]) to fit T on."""

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor] | None: ...


@runtime_checkable
class DatasetSpecific(Protocol):
    """A predictor whose spec depends on the dataset (CLIP's prompts)."""

    @staticmethod
    def expected_spec(config: Config, data: RunData) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PredictorEntry:
    name: str
    cls: type
    cache_stem: Callable[[Config], str]


def _check_predictor(name: str, entry: PredictorEntry, meta: dict[str, Any]) -> None:
    for method in ("from_config", "settings", "logprobs", "spec"):
        if not callable(getattr(entry.cls, method, None)):
            raise TypeError(f"predictor {name!r}: {entry.cls.__name__} has no {method}()")
    entry.cls.name = name


PREDICTORS: Registry[PredictorEntry] = Registry("predictor", on_register=_check_predictor)


def register_predictor(name: str, *, cache_stem: Callable[[Config], str]) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        PREDICTORS.register(name)(PredictorEntry(name, cls, cache_stem))
        return cls

    return deco


def list_predictors() -> list[str]:
    return PREDICTORS.names()


def predictor_entry(name: str) -> PredictorEntry:
    try:
        return PREDICTORS.get(name)
    except ValueError as exc:
        raise ValueError(f"zeroshot.predictor: {exc}") from None


def summary_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """What a made cache's predictor spec says about its fit, as (label, value) rows: each
    registered predictor's ``summary_rows(spec)`` (none for one without it)."""
    kind = spec.get("kind") if spec else None
    entry = PREDICTORS.get(kind) if kind in PREDICTORS else None
    rows = getattr(entry.cls, "summary_rows", None) if entry is not None else None
    return rows(spec) if rows is not None else []


def out_of_fold(kind: Any) -> bool:
    """Whether the predictor a cache's spec names (its ``kind``) predicts every training row
    with models that never trained on it: a class that says ``out_of_fold = True`` (crossfit
    and the probes), whose caches can clean labels and serve as an irreducible-loss model."""
    return kind in PREDICTORS and getattr(PREDICTORS.get(kind).cls, "out_of_fold", False)


def channel_rows(spec: dict[str, Any], rate: str) -> list[tuple[str, str]]:
    """The row of a refit through a noise channel: its kind and noise rate (``rate``: where
    the symmetric channel's rate comes from)."""
    if spec.get("refit_noise") is None:
        return []
    channel = {"symmetric": f"symmetric, {rate}"}.get(spec.get("refit_channel"), "anchor points")
    why = f", mean off-diagonal concentration {c:.2f}" if (c := spec.get("concentration")) else ""
    return [(f"refit round's noise channel ({channel})", f"{spec['refit_noise']:.1%} noise{why}")]


def create_predictor(config: Config, data: RunData, device: torch.device) -> Predictor:
    """The predictor ``config.zeroshot.predictor`` names, for ``data``'s dataset on ``device``."""
    return predictor_entry(config.zeroshot.predictor).cls.from_config(config, data, device)
