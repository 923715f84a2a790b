"""Zero-shot predictors, one file each and registered by name: open_clip CLIP (``clip``), the
hold-out model (``holdout``), the cross-fitted models (``crossfit``), the cross-fitted linear
probes on pixels, CLIP embeddings or a frozen backbone (``probe``, ``probe_clip``,
``probe_backbone``); CLIP's prompts; a predictor over any dataset (``any_dataset``). What they
write is a cache (``bdsel.cache``)."""

from bdsel.predictors import clip, crossfit, holdout, probe  # noqa: E402,F401,I001  (registers them)
from bdsel.predictors.registry import (
    create_predictor,
    list_predictors,
    predictor_entry,
    register_predictor,
)

__all__ = ["create_predictor", "list_predictors", "predictor_entry", "register_predictor"]
