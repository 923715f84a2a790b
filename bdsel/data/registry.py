"""Datasets by name: ``register_dataset``, ``load_dataset``, ``list_datasets``.

A dataset is one file that registers a loader ``(DataConfig) -> Dataset`` under the name
``data.name`` selects, and optionally the class names and templates its CLIP prompts use
(without them: the dataset's own class names and the ImageNet templates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bdsel.config import DataConfig
from bdsel.data.sources import DataError, Dataset

Loader = Callable[[DataConfig], Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Loader
    # CLIP's class names in label order and its templates, or None (the dataset's own names)
    prompts: tuple[tuple[str, ...], tuple[str, ...]] | None = None


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, *, prompts: tuple[Sequence[str], Sequence[str]] | None = None
) -> Callable[[Loader], Loader]:
    """Register ``load(cfg: DataConfig) -> Dataset`` as ``data.name=<name>``."""

    def deco(load: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        frozen = None if prompts is None else (tuple(prompts[0]), tuple(prompts[1]))
        _REGISTRY[name] = DatasetEntry(name, load, frozen)
        return load

    return deco


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
    return _REGISTRY[name]


def dataset_prompts(name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The CLIP class names and templates a dataset registered, or None."""
    entry = _REGISTRY.get(name)
    return None if entry is None else entry.prompts


def load_dataset(cfg: DataConfig) -> Dataset:
    """The base dataset named by ``cfg.name``."""
    return dataset_entry(cfg.name).load(cfg)
