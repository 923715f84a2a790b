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

from bdsel.config import Config
from bdsel.data import RunData
from bdsel.data.label_issues import FILTER_BY, cleaning_stats, find_label_issues
from bdsel.predictors.registry import out_of_fold


def clean_run_data(config: Config, data: RunData) -> RunData:
    """``data`` with ``data.clean``'s flagged points dropped from its train subset, and what
    was dropped in ``cleaning``; ``data`` itself when cleaning is off."""
    clean = config.data.clean
    if clean.cache is None:
        return data
    from bdsel.cache.format import (
        CacheError,
        check_cache_path,
        check_not_partial,
        load_zs_logprobs,
        read_cache_info,
    )
    from bdsel.cache.provenance import check_split

    path = Path(clean.cache)
    check_cache_path(path, "data.clean.cache")
    check_not_partial(path)
    if not path.is_file():
        raise CacheError(
            f"data.clean.cache: {path} does not exist; make it with bdsel cache-zeroshot "
            "--set zeroshot.predictor=crossfit (the same data settings)"
        )
    spec = read_cache_info(path).get("predictor", {})
    if not out_of_fold(spec.get("kind")):
        raise CacheError(
            f"data.clean.cache: {path} was made by {spec.get('kind')!r}; cleaning needs "
            "out-of-fold probabilities, a cache made with zeroshot.predictor=crossfit or a probe"
        )
    check_split(path, spec, config, data)
    idx = data.train_idx
    probs = load_zs_logprobs(path, data.dataset)[idx].double().exp()
    flagged = find_label_issues(data.observed[idx], probs)
    stats = cleaning_stats(flagged, data.noisy[idx])
    stats.update(cache=str(path), filter_by=FILTER_BY)
    return replace(data, train_idx=idx[~flagged], cleaning=stats)
