"""Clean-then-train (``data.clean``): drop the training points whose observed labels
cleanlab's confident learning flags, from a crossfit cache's out-of-fold probabilities,
before any method trains.

The crossfit cache already holds what confident learning needs: for every training point the
probabilities of models that never saw it. ``cleanlab.filter.find_label_issues`` does the
rest (we depend on cleanlab rather than re-deriving it). Since bdsel knows which labels it
corrupted, the run records how many points were flagged and the precision and recall of the
flagged set against the truly mislabeled ones.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bdsel.config import Config
from bdsel.data import RunData


def find_label_issues(labels: torch.Tensor, probs: torch.Tensor, filter_by: str) -> torch.Tensor:
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


def clean_run_data(config: Config, data: RunData) -> RunData:
    """``data`` with ``data.clean``'s flagged points dropped from its train subset, and what
    was dropped in ``cleaning``; ``data`` itself when cleaning is off."""
    clean = config.data.clean
    if clean.cache is None:
        return data
    from bdsel.zeroshot.cache import CacheError, load_zs_logprobs, read_cache_info
    from bdsel.zeroshot.run import check_split

    path = Path(clean.cache)
    if not path.is_file():
        raise CacheError(
            f"data.clean.cache: {path} does not exist; make it with bdsel cache-zeroshot "
            "--set zeroshot.predictor=crossfit (the same data settings)"
        )
    spec = read_cache_info(path).get("predictor", {})
    if spec.get("kind") != "crossfit":
        raise CacheError(
            f"data.clean.cache: {path} was made by {spec.get('kind')!r}; cleaning needs "
            "out-of-fold probabilities, a cache made with zeroshot.predictor=crossfit"
        )
    check_split(path, spec, config, data)
    idx = data.train_idx
    probs = load_zs_logprobs(path, data.dataset)[idx].double().exp()
    flagged = find_label_issues(data.observed[idx], probs, clean.filter_by)
    stats = cleaning_stats(flagged, data.noisy[idx])
    stats.update(cache=str(path), filter_by=clean.filter_by)
    return replace(data, train_idx=idx[~flagged], cleaning=stats)
