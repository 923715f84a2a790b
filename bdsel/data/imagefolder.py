"""Image folders (WebVision style): train/<class>/ and test/<class>/ (or val/<class>/)
subfolders, or ``relative/path label`` file lists; images are decoded on demand. CLIP prompts:
the folders' own class names with the ImageNet templates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from bdsel.config import DataConfig, checks
from bdsel.data.registry import register_dataset
from bdsel.data.sources import IMAGENET_MEAN, IMAGENET_STD, DataError, Dataset, ImageSet

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


@dataclass
class ImageFolderSettings:
    """``data.*`` when data.name=imagefolder."""

    train_list: str | None = None  # "relative/path label" lines (WebVision style)
    test_list: str | None = None  # the test split's lines
    image_size: int = 224  # crop size
    num_workers: int = 4  # DataLoader workers that decode the images
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "image_size": (checks.positive, "a positive int"),
        "num_workers": (checks.at_least(0), "an int >= 0"),
    }  # fmt: skip


@register_dataset("imagefolder", settings=ImageFolderSettings)
def load_imagefolder(cfg: DataConfig) -> Dataset:
    own = cfg.settings or ImageFolderSettings()
    if cfg.root is None:
        raise DataError("data.root is required for data.name=imagefolder")
    base = Path(cfg.root)
    if not base.is_dir():
        raise DataError(f"data.root {base} does not exist")
    if own.train_list or own.test_list:
        if not (own.train_list and own.test_list):
            raise DataError("data.train_list and data.test_list must be given together")
        train = _read_file_list(base, Path(own.train_list))
        test = _read_file_list(base, Path(own.test_list))
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
        image_size=own.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_workers=own.num_workers,
    )
