"""Which observed labels are wrong: cleanlab's confident learning on out-of-fold
probabilities (``find_label_issues``), and how a flagged set fares against the labels bdsel
knows it corrupted (``cleaning_stats``). Used by clean-then-train (``bdsel.cleaning``) and by
the crossfit predictor's refit round; it reads no cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

FILTER_BY = "prune_by_noise_rate"  # cleanlab's default, what clean-then-train uses


def find_label_issues(
    labels: torch.Tensor, probs: torch.Tensor, filter_by: str = FILTER_BY
) -> torch.Tensor:
    """bool [n]: cleanlab's verdict on each (observed label, out-of-fold probabilities [n, C])."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    flagged = cleanlab_find(
        labels=labels.cpu().numpy().astype(np.int64),
        pred_probs=probs.double().cpu().numpy(),
        filter_by=filter_by,
        n_jobs=1,  # no worker processes: forked ones inherit bdsel's SIGTERM handler and
        # print its traceback when cleanlab ends them; the call takes a fraction of a second
    )
    return torch.from_numpy(np.asarray(flagged, dtype=bool))


def cleaning_stats(flagged: torch.Tensor, noisy: torch.Tensor) -> dict[str, Any]:
    """How a flagged set bool [n] fares against the truly mislabeled points bool [n]:
    counts, precision (flagged that are mislabeled) and recall (mislabeled that are flagged;
    None without any), and the mislabeled share of what is left."""
    n_flagged, n_noisy = int(flagged.sum()), int(noisy.sum())
    hits = int((flagged & noisy).sum())
    left = ~flagged
    return {
        "n_points": int(flagged.numel()),
        "n_flagged": n_flagged,
        "n_mislabeled": n_noisy,
        "precision": hits / n_flagged if n_flagged else None,
        "recall": hits / n_noisy if n_noisy else None,
        "mislabeled_left": float(noisy[left].double().mean()) if bool(left.any()) else None,
    }
