"""bdsel: Bayesian data selection for accelerated training.

Online batch selection (Deng, Cui, Zhu, NeurIPS 2023): each step draws a candidate batch,
scores every candidate with a zero-shot predictor and a last-layer Laplace posterior of the
model being trained, and trains on the best few. In your own loop (docs/library.md)::

    import bdsel
    hook = bdsel.LastLayerHook(model)
    table = bdsel.ZeroShotTable.from_cache("cache/mine.h5")
    selector = bdsel.create_selector("bayesian", n_selected=32, zs_logprobs=table,
                                     n_features=hook.n_features)
    for indices, images, labels in loader:               # 320 candidates a step
        with bdsel.scoring(model):
            model(images)
        logits, features = hook.take()
        pos = selector.select(indices, labels, logits, features).positions
        loss = F.cross_entropy(model(images[pos]), labels[pos]); ...; optimizer.step()
        selector.observe(indices[pos], labels[pos], *hook.take())

The names below load their module on first use, so ``import bdsel`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # selection
    "Selector": "bdsel.selection.base",
    "Selection": "bdsel.selection.base",
    "Bayesian": "bdsel.selection.bayesian",
    "create_selector": "bdsel.selection.registry",
    "list_selectors": "bdsel.selection.registry",
    "register_selector": "bdsel.selection.registry",
    "selector_settings": "bdsel.selection.registry",
    "bayesian_score": "bdsel.selection.bayesian_score",
    "LastLayerLaplace": "bdsel.laplace",
    # the model's side
    "LastLayerHook": "bdsel.forward",
    "find_last_linear": "bdsel.forward",
    "scoring": "bdsel.forward",
    # data and per-index tables
    "IndexedDataset": "bdsel.data.indexed",
    "ZeroShotTable": "bdsel.table",
    "write_zeroshot_cache": "bdsel.predictors.any_dataset",
    "crossfit_probe": "bdsel.predictors.probe",
    "crossfit_models": "bdsel.predictors.crossfit_fit",
    "ClipPredictor": "bdsel.predictors.clip",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'bdsel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
