"""Datasets (one file each, registered by name), a run's splits and label noise, and
device-side batching."""

from bdsel.data import cifar, fashion_mnist, imagefolder  # noqa: E402,F401,I001  (registers them)
from bdsel.data.batching import FolderImages, ImageSource, TensorImages, make_image_source
from bdsel.data.indexed import IndexedDataset
from bdsel.data.registry import (
    dataset_entry,
    dataset_prompts,
    list_datasets,
    load_dataset,
    register_dataset,
)
from bdsel.data.sources import DataError, Dataset, ImageSet, from_tensors, int64_sha256
from bdsel.data.splits import RunData, derive_run_data, inject_noise, long_tail_counts

__all__ = [
    "DataError",
    "Dataset",
    "FolderImages",
    "ImageSet",
    "IndexedDataset",
    "ImageSource",
    "RunData",
    "TensorImages",
    "dataset_entry",
    "dataset_prompts",
    "derive_run_data",
    "from_tensors",
    "inject_noise",
    "int64_sha256",
    "list_datasets",
    "load_dataset",
    "long_tail_counts",
    "make_image_source",
    "register_dataset",
]
