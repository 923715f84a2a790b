import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cifar_dir, make_fashion_dir, synthetic_images, write_idx

from bdsel.config import DataConfig, ImbalanceConfig, NoiseConfig
from bdsel.configure import load_config
from bdsel.data import DataError, derive_run_data, from_tensors, load_dataset
from bdsel.data.batching import TensorImages, random_crop_flip
from bdsel.data.fashion_mnist import FASHION_MNIST_CLASSNAMES, load_fashion_mnist


def test_fashion_mnist_gz_and_plain_load_identically(tmp_path: Path):
    a = load_fashion_mnist(str(make_fashion_dir(tmp_path / "gz", 50, 20, gz=True)))
    b = load_fashion_mnist(str(make_fashion_dir(tmp_path / "raw", 50, 20, gz=False)))
    assert a.train.images.shape == (50, 1, 28, 28) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.labels, b.test.labels)
    assert a.class_names == list(FASHION_MNIST_CLASSNAMES)
    x, y = synthetic_images(50, 10, 28, 1, 0)
    assert torch.equal(a.train.images[:, 0], torch.from_numpy(x[:, 0]))
    assert torch.equal(a.train.labels, torch.from_numpy(y.astype(np.int64)))


def test_fashion_mnist_missing_and_corrupt(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist.*dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path / "nowhere"))
    root = make_fashion_dir(tmp_path / "f", 30, 10, gz=False)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in"):
        load_fashion_mnist(str(root))
    root = make_fashion_dir(tmp_path / "g", 30, 10, gz=False)
    img = root / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-100])
    with pytest.raises(DataError, match="corrupt idx file"):
        load_fashion_mnist(str(root))
    root = make_fashion_dir(tmp_path / "h", 30, 10, gz=True)
    gz = root / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_fashion_mnist(str(root))
    write_idx(root / "train-labels-idx1-ubyte", np.zeros((5, 2), dtype=np.uint8))
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not an idx file"):
        load_fashion_mnist(str(root))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path: Path, name: str):
    root = make_cifar_dir(tmp_path, name, n_per_batch=12)
    ds = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    n_train = 60 if name == "cifar10" else 12
    assert ds.train.images.shape == (n_train, 3, 32, 32)
    assert ds.test.images.shape == (12, 3, 32, 32)
    assert ds.n_classes == (10 if name == "cifar10" else 100)
    x, y = synthetic_images(12, ds.n_classes, 32, 3, seed=10)
    assert torch.equal(ds.train.images[:12], torch.from_numpy(x))
    assert torch.equal(ds.train.labels[:12], torch.from_numpy(y.astype(np.int64)))
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    test_file = root / folder / ("test_batch" if name == "cifar10" else "test")
    test_file.write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(DataConfig(name=name, root=str(tmp_path)))


def test_cifar_missing_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def _write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 30, 3), value, dtype=np.uint8)).save(path)


def _folder_config(root: Path, **own) -> DataConfig:
    """data.name=imagefolder with its own settings (data.train_list, ...), as a config sets them."""
    return load_config(values={"data": {"name": "imagefolder", "root": str(root), **own}}).data


def test_imagefolder_subfolders_and_file_list(tmp_path: Path):
    for split in ("train", "val"):
        for c, cls in enumerate(["cat", "dog", "fox"]):
            for i in range(2):
                _write_png(tmp_path / split / cls / f"{i}.png", 40 * c + i)
    ds = load_dataset(_folder_config(tmp_path, image_size=16))
    assert ds.class_names == ["cat", "dog", "fox"]
    assert len(ds.train) == 6 and len(ds.test) == 6
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 2, 2]

    (tmp_path / "train.txt").write_text("train/dog/0.png 1\ntrain/fox/1.png 2\n\n")
    (tmp_path / "val.txt").write_text("val/cat/0.png 0\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\n")
    cfg = _folder_config(tmp_path, train_list="train.txt", test_list="val.txt")
    listed = load_dataset(cfg)
    assert listed.train.labels.tolist() == [1, 2]
    assert listed.train.files[0] == str(tmp_path / "train/dog/0.png")
    assert listed.class_names == ["cat", "dog", "fox"]
    (tmp_path / "train.txt").write_text("train/dog/0.png one\n")
    with pytest.raises(DataError, match=r"train.txt:1: expected 'relative/path label'"):
        load_dataset(cfg)

    from bdsel.data.batching import FolderImages

    src = FolderImages(ds, torch.device("cpu"), augment=True, num_workers=0)
    batches = list(
        src.iter_batches("train", torch.tensor([5, 0, 3]), 2, generator=torch.Generator())
    )
    assert [b[0].tolist() for b in batches] == [[5, 0], [3]]
    assert batches[0][1].shape == (2, 3, 16, 16)


def test_in_memory_dataset_validates():
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    ds = from_tensors(
        "toy", x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([1, 0, 1, 0]), ["a", "b"]
    )
    assert ds.n_classes == 2 and ds.in_memory
    with pytest.raises(ValueError, match="uint8"):
        from_tensors("toy", x.float(), torch.zeros(4), x, torch.zeros(4), ["a"])


def _toy(n: int = 2000, n_classes: int = 10):
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    y = torch.arange(n) % n_classes
    return from_tensors("toy", x, y, x[:10], y[:10], [str(c) for c in range(n_classes)])


@pytest.mark.parametrize("kind", ["symmetric", "pairflip", "uniform"])
def test_splits_and_noise(kind: str):
    ds = _toy()
    cfg = DataConfig(train_fraction=0.5, noise=NoiseConfig(kind=kind, rate=0.2))
    a = derive_run_data(ds, cfg, seed=7, holdout_fraction=0.3)
    b = derive_run_data(ds, cfg, seed=7, holdout_fraction=0.3)
    c = derive_run_data(ds, cfg, seed=8, holdout_fraction=0.3)
    assert torch.equal(a.train_idx, b.train_idx) and torch.equal(a.observed, b.observed)
    assert not torch.equal(a.train_idx, c.train_idx)
    assert len(a.train_idx) == 1000 and len(a.holdout_idx) == 600
    assert not set(a.train_idx.tolist()) & set(a.holdout_idx.tolist())
    outside = torch.ones(2000, dtype=torch.bool)
    outside[a.train_idx] = False
    assert torch.equal(a.observed[outside], a.clean[outside])  # noise only on the train subset
    assert torch.equal(a.noisy, a.observed != a.clean)
    frac = a.noisy[a.train_idx].double().mean().item()
    changed = a.train_idx[a.noisy[a.train_idx]]
    if kind == "symmetric":
        assert frac == pytest.approx(0.2, abs=1e-9)
    elif kind == "pairflip":
        assert frac == pytest.approx(0.2, abs=1e-9)
        assert torch.equal(a.observed[changed], (a.clean[changed] + 1) % 10)
    else:  # uniform redraws: a tenth of the chosen keep their label
        assert 0.2 * 0.9 - 0.03 < frac < 0.2 * 0.9 + 0.03
    assert a.base_noisy_frac == pytest.approx(frac)


def test_validation_split_is_disjoint_clean_and_leaves_the_others_alone():
    ds = _toy()
    noise = NoiseConfig(kind="symmetric", rate=0.4)
    base = DataConfig(train_fraction=0.5, noise=noise)
    with_val = DataConfig(train_fraction=0.5, validation_fraction=0.1, noise=noise)
    a, v = (derive_run_data(ds, c, seed=5, holdout_fraction=0.2) for c in (base, with_val))
    assert len(a.validation_idx) == 0 and len(v.validation_idx) == 200
    # tuning on a validation split must not change what the final runs train on
    assert torch.equal(a.train_idx, v.train_idx) and torch.equal(a.holdout_idx, v.holdout_idx)
    assert torch.equal(a.observed, v.observed)
    # nor does the predictor's hold-out (none for a predictor without one) move the split
    no_holdout = derive_run_data(ds, with_val, seed=5)
    assert len(no_holdout.holdout_idx) == 0
    assert torch.equal(no_holdout.validation_idx, v.validation_idx)
    assert torch.equal(no_holdout.train_idx, v.train_idx)
    val = set(v.validation_idx.tolist())
    assert not val & set(v.train_idx.tolist()) and not val & set(v.holdout_idx.tolist())
    assert not v.noisy[v.validation_idx].any()


def test_long_tail_imbalance_ratio():
    ds = _toy(5000)
    cfg = DataConfig(train_fraction=1.0, imbalance=ImbalanceConfig(ratio=10.0))
    run = derive_run_data(ds, cfg, seed=0)
    counts = torch.bincount(run.clean[run.train_idx], minlength=10)
    assert counts[0] == 500 and counts[9] == 50
    assert torch.all(counts[:-1] >= counts[1:])


def test_crop_and_flip_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    out = random_crop_flip(x, padding=2, flip=True, generator=g)
    g.manual_seed(0)
    offsets = torch.randint(0, 5, (2, 2), generator=g)
    flips = torch.rand(2, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        oy, ox = offsets[0, i].item(), offsets[1, i].item()
        ref = padded[i, :, oy : oy + 5, ox : ox + 5]
        if flips[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)


def test_tensor_images_normalise_and_carry_indices():
    ds = _toy(100)
    ds.mean, ds.std = (0.5,), (0.25,)
    ds.train.images[7] = 255
    src = TensorImages(ds, torch.device("cpu"), augment=False)
    order = torch.tensor([7, 3, 9, 1, 0])
    batches = list(src.iter_batches("train", order, 2, drop_last=True))
    assert [b[0].tolist() for b in batches] == [[7, 3], [9, 1]]
    assert torch.allclose(batches[0][1][0], torch.full((1, 4, 4), 2.0))
    assert torch.allclose(batches[0][1][1], torch.full((1, 4, 4), -2.0))


def test_gzip_reads_are_checked(tmp_path: Path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x02" + b"\x01"))
    from bdsel.data.fashion_mnist import _read_idx

    with pytest.raises(DataError, match="header says"):
        _read_idx(path, 2049)


def test_a_noise_rate_that_makes_labels_point_away_is_refused():
    from bdsel.data.splits import inject_noise

    labels, rng = np.arange(100) % 10, np.random.default_rng(0)
    assert (inject_noise(labels, 10, "symmetric", 0.9, rng) != labels).sum() == 90  # the bound
    for kind, rate, bound in (("symmetric", 0.99, "0.9"), ("pairflip", 0.6, "0.5")):
        with pytest.raises(
            ValueError, match=f"data.noise.rate={rate} .{kind}, 10 classes. is above {bound}:"
        ):
            inject_noise(labels, 10, kind, rate, rng)
    assert (inject_noise(labels, 10, "uniform", 1.0, rng) >= 0).all()  # a redraw: any rate
