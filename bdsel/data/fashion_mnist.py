"""Fashion-MNIST from its four idx files (gzipped or not), and its CLIP prompts."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from bdsel.config import DataConfig
from bdsel.data.registry import register_dataset
from bdsel.data.sources import DataError, Dataset, ImageSet

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSNAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# CLIP publishes no Fashion-MNIST prompts. Its images are 28x28 greyscale product shots of one
# centred item, so we keep the CIFAR-style templates that describe such images (black and
# white, low resolution, blurry) and drop the size/quality variants (small/big, good/bad,
# contrast) that say nothing true about this data; both articles keep the ensemble's habit of
# averaging over phrasing.
FASHION_MNIST_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a black and white photo of a {}.",
    "a black and white photo of the {}.",
    "a low resolution photo of a {}.",
    "a low resolution photo of the {}.",
    "a blurry photo of a {}.",
    "a blurry photo of the {}.",
)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file is corrupt or truncated") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">i", raw[:4])[0] != magic:
        raise DataError(f"{path}: not an idx file (expected magic number {magic})")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(
            f"{path}: corrupt idx file: header says {dims}, "
            f"{len(raw) - header} bytes of data follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the Debian package "
        f"(`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DEFAULT_ROOT}) "
        "or put the four idx files there and set data.root"
    )


def load_fashion_mnist(root: str | None) -> Dataset:
    base = Path(root or FASHION_MNIST_DEFAULT_ROOT)
    if not base.is_dir():
        raise DataError(
            f"Fashion-MNIST directory {base} does not exist. Install the Debian package "
            f"(`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DEFAULT_ROOT}) "
            "or set data.root to a folder with the idx files"
        )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find_idx(base, f"{prefix}-images-idx3-ubyte"), 2051)
        labels = _read_idx(_find_idx(base, f"{prefix}-labels-idx1-ubyte"), 2049)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{base}: {split} has {images.shape[0]} images, {labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= 10:
            raise DataError(f"{base}: {split} labels outside 0..9")
        splits[split] = ImageSet(
            labels=torch.from_numpy(labels.astype(np.int64)),
            images=torch.from_numpy(images.copy()).unsqueeze(1),
        )
    return Dataset(
        name="fashion_mnist",
        train=splits["train"],
        test=splits["test"],
        class_names=list(FASHION_MNIST_CLASSNAMES),
        in_channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        crop_padding=2,
        flip=True,
    )


@register_dataset("fashion_mnist", prompts=(FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES))
def _load(cfg: DataConfig) -> Dataset:
    return load_fashion_mnist(cfg.root)
