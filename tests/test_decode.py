"""On folder data a step decodes what it reads (issue 27): n_b images for methods that choose
without a candidate forward, n_B for those that score the candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_images
from PIL import Image

from bdsel.configure import load_config
from bdsel.data.batching import FolderImages
from bdsel.train import train


def write_jpeg_folder(root: Path, n_train: int = 192, n_test: int = 24, size: int = 20) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = synthetic_images(n, 4, size, 3, seed=len(split))
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            path = root / split / f"class_{c}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(path, quality=90)
    return root


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def _config(root: Path, method: str, **select):
    values = {
        "data": {"name": "imagefolder", "root": str(root), "image_size": 16, "num_workers": 0,
                 "train_fraction": 1.0},
        "model": {"name": "small_cnn"},
        "train": {"epochs": 2, "ema_decay": 0.0},
        "select": {"method": method, "n_candidates": 32, "n_selected": 8, **select},
    }  # fmt: skip
    return load_config(values=values)


def _decoded_in_training(monkeypatch, cfg, run_dir: Path) -> tuple[int, int]:
    """(images decoded by training steps, steps): evaluation's decoding left out."""
    counts = {}
    real = FolderImages.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        counts["source"] = self

    monkeypatch.setattr(FolderImages, "__init__", init)
    monkeypatch.setattr(
        "bdsel.evaluation.Evaluator.__call__",
        lambda self, online, ema: {"test_acc": 0.5, "test_loss": 1.0},
    )
    summary = train(cfg, run_dir)
    return counts["source"].decoded, summary["steps"]


@pytest.mark.parametrize(("method", "per_step"), [("uniform", 8), ("train_loss", 32), ("full", 32)])
def test_a_step_decodes_only_what_its_method_reads(
    jpeg_root: Path, tmp_path: Path, monkeypatch, method: str, per_step: int
):
    cfg = _config(jpeg_root, method)
    decoded, steps = _decoded_in_training(monkeypatch, cfg, tmp_path / method)
    assert steps == 2 * (192 // 32)
    assert decoded == per_step * steps


def test_choosing_ahead_picks_what_choosing_per_step_picks(
    jpeg_root: Path, tmp_path: Path, monkeypatch
):
    """The same uniform picks whether the epoch's choices come first (folder data) or step by
    step (the same images held in memory): the selection stream is the same."""
    picks: dict[str, list] = {"ahead": [], "per_step": []}
    from bdsel.selection.simple import Uniform

    real = Uniform.select

    def spy(self, indices, labels, *args, **kwargs):
        out = real(self, indices, labels, *args, **kwargs)
        picks[spy.key].append(indices[out.positions].tolist())
        return out

    monkeypatch.setattr(Uniform, "select", spy)
    monkeypatch.setattr(
        "bdsel.evaluation.Evaluator.__call__",
        lambda self, online, ema: {"test_acc": 0.5, "test_loss": 1.0},
    )
    cfg = _config(jpeg_root, "uniform")
    spy.key = "ahead"
    train(cfg, tmp_path / "ahead")
    spy.key = "per_step"
    monkeypatch.setattr("bdsel.step.FolderImages", type("NotThisSource", (), {}))
    train(cfg, tmp_path / "per_step")  # the same source, iterated candidate batch by batch
    assert picks["ahead"] == picks["per_step"] and len(picks["ahead"]) == 12
    assert all(torch.tensor(p).unique().numel() == 8 for p in picks["ahead"])
