"""Every registered dataset and zero-shot predictor, end to end through the real CLI on tiny
data (offline): a new entry is tested the day it is registered, or this file fails saying
which entry has no tiny-data recipe here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from bdsel_cli.main import app
from conftest import make_cifar_dir, make_fashion_dir, synthetic_images, write_tiny_clip, write_yaml
from PIL import Image
from typer.testing import CliRunner

from bdsel import rundir
from bdsel.configure import load_config
from bdsel.data import dataset_entry, list_datasets, load_dataset
from bdsel.predict import default_cache_path
from bdsel.predictors import list_predictors, predictor_entry

runner = CliRunner()


# ----------------------------------------------------------------------------- tiny data


def _fashion(root: Path) -> dict:
    return {"root": str(make_fashion_dir(root, n_train=160, n_test=40))}


def _cifar10(root: Path) -> dict:
    return {"root": str(make_cifar_dir(root, "cifar10", n_per_batch=32))}


def _cifar100(root: Path) -> dict:
    return {"root": str(make_cifar_dir(root, "cifar100", n_per_batch=160))}


def _imagefolder(root: Path) -> dict:
    for split, n in (("train", 48), ("test", 12)):
        x, y = synthetic_images(n, 3, 20, 3, seed=len(split))
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            path = root / split / f"class_{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(path)
    return {"root": str(root), "image_size": 16, "num_workers": 0}


# The files of each registered dataset in its own on-disk format, written by the test.
TINY_DATA = {
    "fashion_mnist": _fashion,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "imagefolder": _imagefolder,
}


def _tiny_clip(tmp_path: Path) -> dict:
    """A one-layer open_clip architecture file and a random-init local checkpoint: no download."""
    arch, checkpoint = write_tiny_clip(tmp_path, "bdsel-registry-tiny-clip", patch_size=16)
    return {"model": str(arch), "pretrained": str(checkpoint)}


def _tiny_backbone(tmp_path: Path) -> dict:
    """A small_cnn's random-init weights in a local file: the frozen backbone of the probe."""
    import torch

    from bdsel.models import create_model

    weights = tmp_path / "backbone.pt"
    torch.save(create_model("small_cnn", n_classes=10, in_channels=1).state_dict(), weights)
    return {"epochs": 1, "backbone": "small_cnn", "weights": str(weights)}


# Each registered predictor's zeroshot.* settings for a tiny, offline run.
TINY_PREDICTOR = {
    "holdout": lambda tmp_path: {"epochs": 1, "batch_size": 32},
    "crossfit": lambda tmp_path: {"epochs": 1, "batch_size": 32},
    "probe": lambda tmp_path: {"epochs": 1},
    "probe_clip": lambda tmp_path: {"epochs": 1, **_tiny_clip(tmp_path)},
    "probe_backbone": _tiny_backbone,
    "clip": _tiny_clip,
}


def _values(name: str, data: dict) -> dict:
    return {
        "seed": 1,
        "data": {"name": name, "train_fraction": 0.5, **data},
        "train": {"epochs": 1},
        "select": {"method": "uniform", "n_candidates": 16, "n_selected": 4},
        "eval": {"batch_size": 64},
    }


# ----------------------------------------------------------------------------- the walks


def test_every_registry_entry_has_a_tiny_recipe():
    assert sorted(TINY_DATA) == list_datasets()
    assert sorted(TINY_PREDICTOR) == list_predictors()


def test_registering_the_predictors_loads_no_open_clip():
    """A training run checks names against every registry; only building CLIP loads open_clip."""
    code = (
        "import sys, bdsel.names, bdsel.predictors; "
        "print(sorted(bdsel.predictors.list_predictors()), 'open_clip' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("]")[-1].strip() == "False" and "'clip'" in out.stdout


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_caches_and_trains_through_the_cli(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # the default cache path, cache/<stem>.h5, lands here
    values = _values(name, TINY_DATA[name](tmp_path / "data"))
    values["zeroshot"] = {"predictor": "holdout", "epochs": 1, "batch_size": 32}
    cfg_path = write_yaml(tmp_path, values)

    dataset = load_dataset(load_config(values=values).data)
    assert dataset.name == name and len(dataset.train) > 0 and len(dataset.test) > 0
    prompts = dataset_entry(name).prompts
    assert prompts is None or len(prompts[0]) == dataset.n_classes

    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    cache = default_cache_path(load_config(str(cfg_path)))
    assert cache.is_file() and cache.name.startswith(f"{name}-holdout-")
    with h5py.File(cache) as f:
        assert f["train/logprobs"].shape == (len(dataset.train), dataset.n_classes)
        assert f["train/done"][...].all() and f["test/done"][...].all()

    run_dir = tmp_path / "run"
    args = ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)]
    result = runner.invoke(app, [*args, "--set", "select.method=rho_loss"])  # reads the cache
    assert result.exit_code == 0, result.output
    records = rundir.read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1] and 0.0 <= records[0]["test_acc"] <= 1.0
    assert rundir.read_summary(run_dir)["dataset"] == name


@pytest.mark.parametrize("name", list_predictors())
def test_every_predictor_caches_and_trains_through_the_cli(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fashion_dir: Path
):
    entry = predictor_entry(name)
    assert entry.cls.name == name
    own = load_config(values={"zeroshot": {"predictor": name}}).zeroshot.settings
    assert type(own) is entry.cls.Settings  # its zeroshot.* settings, at their defaults
    monkeypatch.chdir(tmp_path)
    values = _values("fashion_mnist", {"root": str(fashion_dir)})
    values["zeroshot"] = {"predictor": name, **TINY_PREDICTOR[name](tmp_path)}
    cfg_path = write_yaml(tmp_path, values)
    config = load_config(str(cfg_path))

    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    cache = default_cache_path(config)
    # the default name starts with the stem the predictor declares
    assert cache.parent == Path("cache") and cache.name.startswith(entry.cache_stem(config))
    assert cache.suffix == ".h5" and cache.is_file()
    with h5py.File(cache) as f:
        assert json.loads(f.attrs["predictor"])["kind"] == name
        logprobs = torch.from_numpy(f["test/logprobs"][...])
    assert logprobs.shape == (300, 10)
    torch.testing.assert_close(logprobs.exp().sum(1), torch.ones(300), atol=1e-4, rtol=0)

    run_dir = tmp_path / "run"
    args = ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)]
    result = runner.invoke(
        app, [*args, "--set", "select.method=bayesian", "--set", "select.n_samples=8"]
    )
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in rundir.read_metrics(run_dir)] == [1]
