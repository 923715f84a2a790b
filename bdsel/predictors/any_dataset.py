"""A zero-shot cache for a user's own data: any predictor over any map-style Dataset.

    clip = ClipPredictor("ViT-B-32", "/weights/ViT-B-32.pt", class_names, templates)
    write_zeroshot_cache("cache/mine.h5", clip, train_set, labels=train_labels,
                         class_names=class_names)
    table = ZeroShotTable.from_cache("cache/mine.h5")     # temperature="auto"

The file has the format ``bdsel cache-zeroshot`` writes (``bdsel.cache.format``, the
writer both use): resumable after a kill, atomic when complete, with the temperature fitted
on the given labels (and, with ``label_noise``, the fit under symmetric label noise, which
``temperature="auto"`` then applies).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bdsel.cache.writer import CacheSummary, build_cache
from bdsel.calibration import calibration_step
from bdsel.data.batching import stack_images
from bdsel.data.sources import Dataset, ImageSet
from bdsel.runtime import RowsBar


def checked_labels(labels: Any, n: int, n_classes: int, name: str) -> torch.Tensor:
    """``labels`` as int64 [n] on the CPU; ValueError naming ``name`` otherwise."""
    raw = torch.as_tensor(labels).cpu()
    if raw.is_floating_point() and not bool((raw == raw.round()).all()):
        raise ValueError(f"{name}: values must be class indices, got fractional ones")
    y = raw.long()
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: expected {n} labels [N], got {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{name}: values must be class indices in 0..{n_classes - 1}")
    return y


def _labels_only(
    name: str, train: torch.Tensor, test: torch.Tensor, class_names: Sequence[str]
) -> Dataset:
    """The bdsel Dataset a cache's fingerprint and statistics read: labels, no images."""
    return Dataset(name, ImageSet(labels=train), ImageSet(labels=test), list(class_names),
                   in_channels=0, image_size=0, mean=(), std=())  # fmt: skip


class DatasetPredictor:
    """Runs ``predict`` over rows of map-style datasets, as ``build_cache`` asks for them."""

    def __init__(
        self,
        predict: Callable[[Any], torch.Tensor],
        splits: dict[str, torch.utils.data.Dataset | None],
        spec: dict[str, Any],
        num_workers: int = 0,
    ) -> None:
        self.predict, self.splits, self._spec = predict, splits, spec
        self.num_workers = num_workers

    def spec(self) -> dict[str, Any]:
        return self._spec

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        dataset = self.splits[split]
        assert dataset is not None, f"no {split} dataset, yet rows of it were asked for"
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, rows.tolist()),
            batch_size=len(rows),
            num_workers=self.num_workers,
            collate_fn=stack_images,
        )
        (images,) = list(loader)
        with torch.no_grad():
            out = self.predict(images)
        return torch.log_softmax(out.detach().float().cpu(), dim=1)


def write_zeroshot_cache(
    path: str | Path,
    predictor: Callable[[Any], torch.Tensor],
    train: torch.utils.data.Dataset,
    *,
    labels: torch.Tensor | Sequence[int],
    class_names: Sequence[str],
    test: torch.utils.data.Dataset | None = None,
    test_labels: torch.Tensor | Sequence[int] | None = None,
    name: str = "custom",
    spec: dict[str, Any] | None = None,
    label_noise: bool = True,
    batch_size: int = 256,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> CacheSummary:
    """Run ``predictor`` over every item of ``train`` (and ``test``) and write a zero-shot
    cache at ``path``; resumable. Returns the cache's summary.

    Args:
        predictor: images (stacked tensors, or a list of PIL images) -> log-probs or logits
            [B, C], run under no_grad: a ClipPredictor, the user's own model, any callable.
        train, test: map-style datasets, item ``i`` = ``(image, label)`` or an image; row
            ``i`` of the cache is item ``i`` (its global index).
        labels: the train items' labels [N] (observed: they fingerprint the data and fit the
            temperature); ``test_labels``: the test items' labels.
        class_names: the C classes, in the predictor's output order.
        spec: what identifies the predictor, checked on resume (default: its ``spec()``).
        label_noise: the labels may be wrong: also fit the temperature with a symmetric
            label-noise rate (``temperature="auto"`` applies it).
    """
    train_labels = checked_labels(labels, len(train), len(class_names), "labels")
    if (test is None) != (test_labels is None):
        raise ValueError("test and test_labels go together: pass both or neither")
    test_y = checked_labels(
        [] if test_labels is None else test_labels,
        0 if test is None else len(test),
        len(class_names),
        "test_labels",
    )
    if spec is None:
        spec = predictor.spec() if callable(getattr(predictor, "spec", None)) else {}
    spec = {"kind": "custom", **spec}
    dataset = _labels_only(name, train_labels, test_y, class_names)
    runner = DatasetPredictor(predictor, {"train": train, "test": test}, spec, num_workers)
    rows = torch.arange(len(train_labels))
    with RowsBar(console, show=progress) as bar:
        return build_cache(
            path,
            dataset,
            runner,
            batch_size=batch_size,
            overwrite=overwrite,
            finish=calibration_step(rows, train_labels, label_noise),
            progress=bar,
        )
