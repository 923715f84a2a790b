"""A map-style dataset whose items carry their global index, for a user's own DataLoader."""

from __future__ import annotations

from typing import Any

import torch


class IndexedDataset(torch.utils.data.Dataset):
    """Item ``i`` of ``dataset``, with ``i`` in front: ``(i, image, label)`` when the dataset
    yields ``(image, label)``. A DataLoader over it then batches the global indices with the
    data (``indices, images, labels = batch``), which is what a selector's per-index tables
    (zero-shot log-probs, noise flags) are read by.

    With ``labels`` [N] (e.g. labels with injected noise, or cleaned ones) those replace the
    dataset's own labels in every item."""

    def __init__(self, dataset: torch.utils.data.Dataset, labels: torch.Tensor | None = None):
        self.dataset = dataset
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and len(self.labels) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"labels: {len(self.labels)} labels for a dataset of {len(dataset)} items"  # type: ignore[arg-type]
            )

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        item = tuple(item) if isinstance(item, tuple | list) else (item,)
        if self.labels is not None:
            item = (item[0], self.labels[index], *item[2:])
        return (index, *item)
