"""The zero-shot cache: a predictor's log p(c | x) for every train and test row in one HDF5
file. ``format``: the layout, its checks and reading; ``writer``: resumable writing in row
batches; ``stats``: what a filled cache's rows say (its accuracies);
``provenance``: which split and rows a cache was made for."""

from bdsel.cache.format import (
    CacheError,
    auto_temperature,
    load_zs_logprobs,
    partial_path,
    read_cache_info,
)

__all__ = ["CacheError", "auto_temperature", "load_zs_logprobs", "partial_path", "read_cache_info"]
