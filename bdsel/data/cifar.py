"""CIFAR-10 and CIFAR-100 from torchvision's python-format pickles, and CLIP's prompts for
them (openai/CLIP, data/prompts.md)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bdsel.config import DataConfig
from bdsel.data.registry import register_dataset
from bdsel.data.sources import DataError, Dataset, ImageSet

CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

CIFAR10_CLASSNAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# torchvision's fine-label names (label order) with underscores replaced, as in CLIP's file.
CIFAR100_CLASSNAMES: tuple[str, ...] = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
)  # fmt: skip

_CIFAR = {
    # name: (folder, train files, test file, meta file, label key, names key, mean, std)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CIFAR file ({exc}); it is corrupt") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python pickle")
    return obj


def load_cifar(name: str, root: str | None, download: bool) -> Dataset:
    folder, train_files, test_file, meta_file, label_key, names_key, mean, std = _CIFAR[name]
    base = Path(root or "data")
    if not (base / folder).is_dir() and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(base), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataError(f"downloading {name} into {base} failed: {exc}") from exc
    if not (base / folder).is_dir():
        raise DataError(
            f"{name}: {base / folder} not found. Put torchvision's python-format files there "
            "(set data.root), or set data.download=true on a machine with internet access"
        )

    def read(files: list[str]) -> ImageSet:
        xs, ys = [], []
        for fname in files:
            path = base / folder / fname
            if not path.is_file():
                raise DataError(f"{name}: missing {path}")
            batch = _unpickle(path)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{path}: corrupt CIFAR file (no 'data' / '{label_key}')")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(batch[label_key]):
                raise DataError(f"{path}: corrupt CIFAR file (data shape {data.shape})")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        return ImageSet(
            labels=torch.from_numpy(np.concatenate(ys)),
            images=torch.from_numpy(np.concatenate(xs)),
        )

    meta = _unpickle(base / folder / meta_file) if (base / folder / meta_file).is_file() else {}
    n_classes = 10 if name == "cifar10" else 100
    class_names = list(meta.get(names_key, [])) or [str(i) for i in range(n_classes)]
    return Dataset(
        name=name,
        train=read(train_files),
        test=read([test_file]),
        class_names=class_names,
        in_channels=3,
        image_size=32,
        mean=mean,
        std=std,
        crop_padding=4,
        flip=True,
    )


@dataclass
class CifarSettings:
    """``data.*`` when data.name=cifar10 or cifar100."""

    download: bool = False  # let torchvision download into data.root (needs internet)


def _download(cfg: DataConfig) -> bool:
    return (cfg.settings or CifarSettings()).download


@register_dataset("cifar10", prompts=(CIFAR10_CLASSNAMES, CIFAR_TEMPLATES), settings=CifarSettings)
def _load_cifar10(cfg: DataConfig) -> Dataset:
    return load_cifar("cifar10", cfg.root, _download(cfg))


@register_dataset(
    "cifar100", prompts=(CIFAR100_CLASSNAMES, CIFAR_TEMPLATES), settings=CifarSettings
)
def _load_cifar100(cfg: DataConfig) -> Dataset:
    return load_cifar("cifar100", cfg.root, _download(cfg))
