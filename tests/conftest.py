"""Shared fixtures: tiny datasets written in the real on-disk formats."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` (uint8) in the idx format of MNIST / Fashion-MNIST."""
    magic = 0x0800 | array.ndim
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    raw += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def synthetic_images(n: int, n_classes: int, size: int, channels: int, seed: int):
    """Learnable images: class c lights a band whose position depends on c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.int64)
    band = max(1, size // n_classes)
    for i, c in enumerate(labels):
        images[i, :, (c * band) % size : (c * band) % size + band, :] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def make_fashion_dir(root: Path, n_train: int = 1200, n_test: int = 300, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = synthetic_images(n, 10, 28, 1, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x[:, 0], gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
    return root


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    return make_fashion_dir(tmp_path_factory.mktemp("fmnist"))


def make_cifar_dir(root: Path, name: str = "cifar10", n_per_batch: int = 20) -> Path:
    n_classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder, train_files, test_file, meta, key, names_key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "batches.meta",
            "labels",
            "label_names",
        )
    else:
        folder, train_files, test_file, meta, key, names_key = (
            "cifar-100-python",
            ["train"],
            "test",
            "meta",
            "fine_labels",
            "fine_label_names",
        )
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    for i, fname in enumerate([*train_files, test_file]):
        x, y = synthetic_images(n_per_batch, n_classes, 32, 3, seed=10 + i)
        batch = {"data": x.reshape(n_per_batch, -1), key: [int(v) for v in y]}
        (d / fname).write_bytes(pickle.dumps(batch))
    names = [f"class_{c}" for c in range(n_classes)]
    (d / meta).write_bytes(pickle.dumps({names_key: names}))
    return root


@pytest.fixture
def tiny_config_values(fashion_dir: Path) -> dict:
    """A config that trains in seconds on the synthetic Fashion-MNIST files."""
    return {
        "seed": 3,
        "data": {
            "name": "fashion_mnist",
            "root": str(fashion_dir),
            "train_fraction": 0.5,
            "noise": {"kind": "symmetric", "rate": 0.2},
        },
        "model": {"name": "small_cnn"},
        "train": {"epochs": 2},
        "select": {"method": "uniform", "n_candidates": 64, "n_selected": 16},
        "eval": {"every": 1, "batch_size": 128},
        # a clean hold-out split (a fifth of the training set): tests of any table
        "zeroshot": {"predictor": "holdout", "holdout": {"holdout_fraction": 0.2}},
        "report": {"targets": [0.3, 0.99]},
    }


def write_tiny_clip(tmp_path: Path, name: str, patch_size: int = 16) -> tuple[Path, Path]:
    """A one-layer open_clip architecture file registered as ``name`` and a random-init local
    checkpoint: (architecture file, checkpoint). No download."""

    import open_clip

    arch = tmp_path / f"{name}.json"
    text_cfg = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
    vision_cfg = {"image_size": 32, "layers": 1, "width": 64, "patch_size": patch_size}
    arch.write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": text_cfg}))
    open_clip.add_model_config(arch)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model(arch.stem).state_dict(), checkpoint)
    return arch, checkpoint


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """Make folders read-only for this process, root included (chmod does not bind root)."""
    folders: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        p = Path(os.fsdecode(path)).absolute()
        return any(p == f or f in p.parents for f in folders)

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        folders.append(path.absolute())
        return path

    return make


def one_line(result) -> str:
    """A CLI result's output as one line (rich wraps long lines)."""
    return " ".join(result.output.split())


def _error_lines(result) -> list[str]:
    """The lines from ``error:`` on (the message must take one, two at most)."""
    text = result.output
    assert "error:" in text, text
    return text[text.index("error:") :].strip().splitlines()


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "Traceback" not in result.output
    assert len(_error_lines(result)) <= 2, result.output
    for fragment in fragments:
        assert fragment in one_line(result), (fragment, result.output)


def write_yaml(tmp_path: Path, values: dict, name: str = "tiny.yaml") -> Path:
    """A config file holding ``values``."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def config_file(tmp_path: Path, values: dict, epochs: int) -> Path:
    """A config file of ``values`` that trains ``epochs`` epochs, logging every 5 steps."""
    return write_yaml(tmp_path, dict(values, train={"epochs": epochs}))
