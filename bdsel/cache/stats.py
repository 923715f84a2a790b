"""What a filled cache's rows say, stored in its attributes when it is made: each split's
accuracy and mean clean-label log-prob (the calibration is the caller's finish step:
``bdsel.calibration.calibration_attrs``)."""

from __future__ import annotations

import h5py
import torch

from bdsel.cache.format import READ_ROWS


def split_stats(f: h5py.File, split: str, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy vs the clean labels, mean log-prob of the clean label), read in chunks."""
    ds, labels = f[split]["logprobs"], labels.detach().cpu().long()
    n = len(labels)
    if n == 0:
        return float("nan"), float("nan")
    correct, total_lp = 0, 0.0
    for start in range(0, n, READ_ROWS):
        lp = torch.from_numpy(ds[start : start + READ_ROWS])
        y = labels[start : start + len(lp)]
        correct += int((lp.argmax(dim=1) == y).sum())
        total_lp += float(lp.gather(1, y[:, None]).double().sum())
    return correct / n, total_lp / n
