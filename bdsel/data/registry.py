"""Datasets by name: ``register_dataset``, ``load_dataset``, ``list_datasets``.

A dataset is one file that registers a loader ``(DataConfig) -> Dataset`` under the name
``data.name`` selects, optionally its own settings (``settings``: a dataclass beside the
loader, set as ``data.<key>`` and read as ``cfg.settings``) and the class names and templates
its CLIP prompts use (without them: the dataset's own class names and the ImageNet
templates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bdsel.config import DataConfig
from bdsel.data.sources import DataError, Dataset
from bdsel.registry import Registry

Loader = Callable[[DataConfig], Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Loader
    # CLIP's class names in label order and its templates, or None (the dataset's own names)
    prompts: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    settings: type | None = None  # its data.* settings (bdsel.configure)


DATASETS: Registry[DatasetEntry] = Registry("dataset", error=DataError)


def register_dataset(
    name: str,
    *,
    prompts: tuple[Sequence[str], Sequence[str]] | None = None,
    settings: type | None = None,
) -> Callable[[Loader], Loader]:
    """Register ``load(cfg: DataConfig) -> Dataset`` as ``data.name=<name>``."""

    def deco(load: Loader) -> Loader:
        frozen = None if prompts is None else (tuple(prompts[0]), tuple(prompts[1]))
        DATASETS.register(name)(DatasetEntry(name, load, frozen, settings))
        return load

    return deco


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_entry(name: str) -> DatasetEntry:
    return DATASETS.get(name)


def dataset_prompts(name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The CLIP class names and templates a dataset registered, or None."""
    return DATASETS.get(name).prompts if name in DATASETS else None


def load_dataset(cfg: DataConfig) -> Dataset:
    """The base dataset named by ``cfg.name``."""
    return dataset_entry(cfg.name).load(cfg)
