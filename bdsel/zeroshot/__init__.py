"""Zero-shot predictors (one file each, registered by name: open_clip CLIP, the hold-out
model, the cross-fitted models, the cross-fitted linear probe), their prompts, and the HDF5
cache of their log-probabilities that training reads by global index."""

from bdsel.zeroshot import clip, crossfit, holdout, probe  # noqa: E402,F401,I001  (registers them)
from bdsel.zeroshot.registry import (
    create_predictor,
    list_predictors,
    predictor_entry,
    register_predictor,
)

__all__ = ["create_predictor", "list_predictors", "predictor_entry", "register_predictor"]
