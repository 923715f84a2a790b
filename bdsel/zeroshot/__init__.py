"""Zero-shot predictors (open_clip CLIP, the hold-out model), their prompts, and the HDF5
cache of their log-probabilities that training reads by global index."""
