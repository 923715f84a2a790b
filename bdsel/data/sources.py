"""Base datasets: the training set (stable global indices 0..N-1), the test set, class names.

Small datasets (Fashion-MNIST, CIFAR) load into uint8 tensors [N, C, H, W]; folder datasets
keep file paths and are decoded by a DataLoader. The loaders are one file each
(``fashion_mnist.py``, ``cifar.py``, ``imagefolder.py``), registered by name in
``registry.py``. Nothing here depends on a run's config beyond where the files are: splits,
noise and imbalance are derived in ``splits.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """Missing or unreadable dataset files; the message says where it looked and what to do."""


@dataclass
class ImageSet:
    """One split of a base dataset."""

    labels: torch.Tensor  # int64 [N] clean labels
    images: torch.Tensor | None = None  # uint8 [N, C, H, W] for in-memory data
    files: list[str] | None = None  # image paths (folder data), decoded on demand

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """A base dataset. ``train`` rows are addressed by their global index."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # device augmentation: random crop with this padding
    flip: bool = False  # device augmentation: random horizontal flip
    num_workers: int = 0  # DataLoader workers that decode a file-backed dataset's images

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None


def int64_sha256(values: torch.Tensor) -> str:
    """Hex sha256 of integers (labels, indices) as little-endian int64: the same on any device
    and platform, so a cache can check it is read with the labels or split it was made for."""
    data = values.detach().to(torch.int64).cpu().numpy().astype("<i8")
    return hashlib.sha256(data.tobytes()).hexdigest()


def from_tensors(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    class_names: list[str],
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    crop_padding: int = 0,
    flip: bool = False,
) -> Dataset:
    """An in-memory dataset from uint8 images [N, C, H, W] and int labels [N]."""
    for what, x in (("train_images", train_images), ("test_images", test_images)):
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"{what}: expected uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    c = train_images.shape[1]
    if mean is None or std is None:
        x = train_images.float().div_(255)
        mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
        std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return Dataset(
        name=name,
        train=ImageSet(labels=train_labels.long(), images=train_images),
        test=ImageSet(labels=test_labels.long(), images=test_images),
        class_names=list(class_names),
        in_channels=int(c),
        image_size=int(train_images.shape[-1]),
        mean=tuple(mean),
        std=tuple(std),
        crop_padding=crop_padding,
        flip=flip,
    )
