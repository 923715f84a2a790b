"""Base datasets: the training set (stable global indices 0..N-1), the test set, class names.

Small datasets (Fashion-MNIST, CIFAR) load into uint8 tensors [N, C, H, W]; folder datasets
keep file paths and are decoded by a DataLoader. Nothing here depends on a run's config
beyond where the files are: splits, noise and imbalance are derived in ``splits.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bdsel.config import DataConfig

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagefolder")


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

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None


def labels_sha256(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


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


# ----------------------------------------------------------------------------- Fashion-MNIST


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
        class_names=list(FASHION_MNIST_CLASSES),
        in_channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        crop_padding=2,
        flip=True,
    )


# ----------------------------------------------------------------------------- CIFAR

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


# ----------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _scan_folder(split_dir: Path, class_names: list[str] | None) -> tuple[ImageSet, list[str]]:
    classes = class_names or sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders")
    files, labels = [], []
    for label, cls in enumerate(classes):
        cdir = split_dir / cls
        if not cdir.is_dir():
            continue
        for p in sorted(cdir.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(p))
                labels.append(label)
    if not files:
        raise DataError(f"{split_dir}: no images in its class subfolders")
    return ImageSet(labels=torch.tensor(labels, dtype=torch.int64), files=files), classes


def _read_file_list(base: Path, list_path: Path) -> ImageSet:
    if not list_path.is_absolute():
        list_path = base / list_path
    if not list_path.is_file():
        raise DataError(f"file list {list_path} not found")
    files, labels = [], []
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise DataError(f"{list_path}:{lineno}: expected 'relative/path label', got {line!r}")
        files.append(str(base / parts[0]))
        labels.append(int(parts[1]))
    if not files:
        raise DataError(f"{list_path}: empty file list")
    return ImageSet(labels=torch.tensor(labels, dtype=torch.int64), files=files)


def load_imagefolder(cfg: DataConfig) -> Dataset:
    if cfg.root is None:
        raise DataError("data.root is required for data.name=imagefolder")
    base = Path(cfg.root)
    if not base.is_dir():
        raise DataError(f"data.root {base} does not exist")
    if cfg.train_list or cfg.test_list:
        if not (cfg.train_list and cfg.test_list):
            raise DataError("data.train_list and data.test_list must be given together")
        train = _read_file_list(base, Path(cfg.train_list))
        test = _read_file_list(base, Path(cfg.test_list))
        n_classes = int(max(train.labels.max(), test.labels.max())) + 1
        names_file = base / "classes.txt"
        if names_file.is_file():
            class_names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
            if len(class_names) < n_classes:
                raise DataError(f"{names_file}: {len(class_names)} names for {n_classes} classes")
        else:
            class_names = [str(i) for i in range(n_classes)]
    else:
        test_dir = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
        if not (base / "train").is_dir() or test_dir is None:
            raise DataError(
                f"{base}: expected train/<class>/ and test/<class>/ (or val/<class>/) "
                "subfolders, or data.train_list/data.test_list file lists"
            )
        train, class_names = _scan_folder(base / "train", None)
        test, _ = _scan_folder(test_dir, class_names)
    return Dataset(
        name="imagefolder",
        train=train,
        test=test,
        class_names=class_names,
        in_channels=3,
        image_size=cfg.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def load_dataset(cfg: DataConfig) -> Dataset:
    """The base dataset named by ``cfg.name``."""
    if cfg.name == "fashion_mnist":
        return load_fashion_mnist(cfg.root)
    if cfg.name in _CIFAR:
        return load_cifar(cfg.name, cfg.root, cfg.download)
    if cfg.name == "imagefolder":
        return load_imagefolder(cfg)
    raise DataError(f"unknown dataset {cfg.name!r}; valid: {', '.join(DATASET_NAMES)}")
