"""Datasets, a run's splits and label noise, and device-side batching."""

from bdsel.data.batching import FolderImages, ImageSource, TensorImages, make_image_source
from bdsel.data.sources import (
    DATASET_NAMES,
    DataError,
    Dataset,
    ImageSet,
    from_tensors,
    labels_sha256,
    load_dataset,
)
from bdsel.data.splits import RunData, derive_run_data, inject_noise, long_tail_counts

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Dataset",
    "FolderImages",
    "ImageSet",
    "ImageSource",
    "RunData",
    "TensorImages",
    "derive_run_data",
    "from_tensors",
    "inject_noise",
    "labels_sha256",
    "load_dataset",
    "long_tail_counts",
    "make_image_source",
]
