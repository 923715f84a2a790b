"""Zero-shot predictor, prompts and HDF5 cache: CPU, offline, a tiny random-init open_clip model.

The model is registered with ``open_clip.add_model_config``, saved with ``torch.save`` and
loaded back through ``ClipPredictor(pretrained=<path>)``, the path real checkpoints take.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from rich.console import Console

from bdsel.cache.format import (
    REQUIRED_ATTRS,
    CacheError,
    dataset_fingerprint,
    load_zs_logprobs,
    partial_path,
    read_cache_info,
)
from bdsel.cache.writer import build_cache
from bdsel.data.cifar import CIFAR10_CLASSNAMES, CIFAR100_CLASSNAMES, CIFAR_TEMPLATES
from bdsel.data.fashion_mnist import FASHION_MNIST_CLASSNAMES
from bdsel.data.sources import Dataset, ImageSet
from bdsel.predictors.clip import ClipPredictor, ClipZeroShot
from bdsel.predictors.prompts import (
    IMAGENET_TEMPLATES,
    load_prompt_file,
    prompts_for,
)
from bdsel.runtime import RowsBar

TINY = "bdsel-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
N_TRAIN, N_TEST = 40, 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_clip")
    (root / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    path = root / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def make_dataset(name: str, class_names, channels: int, size: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, len(class_names), (n,), generator=g)
        return ImageSet(labels=labels, images=images)

    return Dataset(name=name, train=split(N_TRAIN), test=split(N_TEST), class_names=list(class_names),
                   in_channels=channels, image_size=size, mean=(0.5,) * channels, std=(0.25,) * channels)  # fmt: skip


@pytest.fixture(scope="module")
def cifar() -> Dataset:
    return make_dataset("cifar10", CIFAR10_CLASSNAMES, 3, 32)


@pytest.fixture(scope="module")
def predictor(checkpoint) -> ClipPredictor:
    names, templates = prompts_for("cifar10", list(CIFAR10_CLASSNAMES))
    return ClipPredictor(TINY, str(checkpoint), names, templates, batch_size=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory, cifar, predictor) -> Path:
    path = tmp_path_factory.mktemp("cache") / "cifar10-tiny.h5"
    build_cache(path, cifar, ClipZeroShot(predictor, cifar), batch_size=16, flush_every=1)
    return path


def copy_of(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / path.name
    shutil.copy(path, out)
    return out


def double_model(checkpoint: Path):
    model = open_clip.create_model(TINY, pretrained=str(checkpoint)).double().eval()
    return model, open_clip.get_tokenizer(TINY)


# ---------------------------------------------------------------------- prompts


def test_builtin_prompts_are_clips():
    assert len(CIFAR_TEMPLATES) == len(set(CIFAR_TEMPLATES)) == 18
    assert (
        CIFAR_TEMPLATES[0] == "a photo of a {}." and CIFAR_TEMPLATES[-1] == "a photo of the big {}."
    )
    assert len(CIFAR100_CLASSNAMES) == len(set(CIFAR100_CLASSNAMES)) == 100
    assert list(CIFAR100_CLASSNAMES) == sorted(CIFAR100_CLASSNAMES)  # torchvision label order
    assert IMAGENET_TEMPLATES == ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                                  "a photo of the large {}.", "a {} in a video game.",
                                  "art of the {}.", "a photo of the small {}.")  # fmt: skip
    # torchvision's CIFAR-100 names carry underscores; CLIP's read with spaces.
    names, templates = prompts_for("cifar100", [n.replace(" ", "_") for n in CIFAR100_CLASSNAMES])
    assert names[1] == "aquarium fish" and templates == list(CIFAR_TEMPLATES)
    names, templates = prompts_for("imagefolder", ["golden_retriever", "tabby_cat"])
    assert names == ["golden retriever", "tabby cat"] and templates == list(IMAGENET_TEMPLATES)
    names, templates = prompts_for("fashion_mnist", list(FASHION_MNIST_CLASSNAMES))
    assert names[0] == "T-shirt/top" and all(t.count("{}") == 1 for t in templates)
    assert prompts_for("cifar10", [str(i) for i in range(10)])[0] == list(CIFAR10_CLASSNAMES)
    swapped = list(CIFAR10_CLASSNAMES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match="label order"):
        prompts_for("cifar10", swapped)


def test_prompt_file_valid(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text(
        "class_names: [red fox, 'T-shirt/top']\ntemplates: ['a photo of a {}.', 'art of the {}.']\n"
    )
    j = tmp_path / "p.json"
    j.write_text(
        json.dumps({"class_names": ["red fox", "T-shirt/top"], "templates": ["a {} here"]})
    )
    assert load_prompt_file(y) == (
        ["red fox", "T-shirt/top"],
        ["a photo of a {}.", "art of the {}."],
    )
    assert load_prompt_file(j) == (["red fox", "T-shirt/top"], ["a {} here"])
    assert prompts_for("cifar10", ["a", "b"], prompt_file=y)[0] == ["red fox", "T-shirt/top"]
    with pytest.raises(ValueError, match="2 class names, dataset 'cifar10' has 3"):
        prompts_for("cifar10", ["a", "b", "c"], prompt_file=y)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("templates: ['a {}.']\n", "missing key 'class_names'"),
        ("class_names: [a]\ntemplates: ['a photo']\n", "exactly one '{}'"),
        ("class_names: [a]\ntemplates: ['{} and {}']\n", "exactly one '{}'"),
        ("class_names: [a]\ntemplates: ['a {c}']\n", "exactly one '{}' field (found: {c})"),
        ("class_names: [a]\ntemplates: ['a {']\n", "not a format string"),
        ("class_names: [a]\ntemplates: []\n", "non-empty list"),
        ("class_names: [a, a]\ntemplates: ['{}']\n", "duplicate class names"),
        ("class_names: [a]\ntemplates: ['{}']\nextra: 1\n", "unknown keys"),
        ("- just a list\n", "expected a mapping"),
        ("class_names: [\n", "cannot parse"),
    ],
)
def test_prompt_file_invalid(tmp_path, text, problem):
    path = tmp_path / "bad_prompts.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad_prompts.yaml") as info:
        load_prompt_file(path)
    assert problem in str(info.value)


# ---------------------------------------------------------------------- the CLIP predictor


def test_classifier_is_renormalised_mean_of_prompt_embeddings(checkpoint, predictor):
    model, tokenizer = double_model(checkpoint)
    rows = []
    with torch.no_grad():
        for name in predictor.class_names:
            emb = model.encode_text(tokenizer([t.format(name) for t in predictor.templates]))
            mean = (emb / emb.norm(dim=1, keepdim=True)).mean(dim=0)
            rows.append(mean / mean.norm())
    expected = torch.stack(rows)  # [C, D] float64
    assert predictor.classifier.shape == (10, TINY_CFG["embed_dim"])
    torch.testing.assert_close(predictor.classifier.double(), expected, atol=2e-6, rtol=0)
    single = model.encode_text(
        tokenizer([predictor.templates[0].format(n) for n in predictor.class_names])
    )
    assert not torch.allclose(
        predictor.classifier.double(), single / single.norm(dim=1, keepdim=True), atol=1e-3
    )


def test_logprobs_are_log_softmax_of_scaled_cosine(checkpoint, predictor, cifar):
    model, _ = double_model(checkpoint)
    rows = torch.tensor([39, 0, 5, 7])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    x = (cifar.train.images[rows].double() / 255 - mean) / std  # 32x32 already: no resize
    with torch.no_grad():
        f = model.encode_image(x)
        cos = (f / f.norm(dim=1, keepdim=True)) @ predictor.classifier.double().T
        expected = torch.log_softmax(model.logit_scale.exp() * cos, dim=1)
    got = predictor.image_logprobs(cifar.train, rows)
    assert got.dtype == torch.float32 and got.shape == (4, 10)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(
        1 / 0.07, rel=1e-6
    )  # random init


def test_tensor_preprocess_matches_pil_transform_and_files(checkpoint, tmp_path):
    ds = make_dataset("fashion_mnist", FASHION_MNIST_CLASSNAMES, 1, 28, seed=1)
    names, templates = prompts_for(ds.name, ds.class_names)
    pred = ClipPredictor(TINY, str(checkpoint), names, templates, batch_size=8)
    x = ds.train.images[:8]
    from_pil = torch.stack(
        [pred.preprocess(Image.fromarray(img[0].numpy(), mode="L")) for img in x]
    )
    from_tensor = pred.preprocess_tensor(x)
    assert from_tensor.shape == from_pil.shape == (8, 3, 32, 32)
    levels = (from_tensor - from_pil).abs() * pred._std * 255  # in uint8 grey levels
    assert levels.max() <= 1.0 + 1e-3 and (levels > 0.5).float().mean() < 0.01
    # The same images as PNG files go through PIL + open_clip's own transform.
    files = []
    for i, img in enumerate(ds.train.images):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img[0].numpy(), mode="L").save(files[-1])
    rows = torch.arange(N_TRAIN)
    from_files = pred.image_logprobs(ImageSet(labels=ds.train.labels, files=files), rows)
    in_memory = pred.image_logprobs(ds.train, rows)
    torch.testing.assert_close(from_files, in_memory, atol=2e-3, rtol=0)
    build_cache(tmp_path / "fm.h5", ds, ClipZeroShot(pred, ds), batch_size=16)  # grey, resized
    assert torch.equal(load_zs_logprobs(tmp_path / "fm.h5", ds), in_memory)
    pred.close()


def test_checkpoint_path_and_tag_errors(checkpoint, predictor, tmp_path):
    spec = predictor.spec()
    assert spec["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (spec["kind"], spec["model"], spec["precision"]) == ("clip", TINY, "fp32")
    assert spec["templates"] == list(CIFAR_TEMPLATES) and len(spec["class_names"]) == 10
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipPredictor(TINY, str(tmp_path / "missing.pt"), ["a"], ["{}"])
    with pytest.raises(ValueError, match="known tag"):
        ClipPredictor(TINY, "no-such-tag", ["a"], ["{}"])
    with pytest.raises(ValueError, match="precision"):
        ClipPredictor(TINY, str(checkpoint), ["a"], ["{}"], precision="fp8")


# ---------------------------------------------------------------------- the cache


def test_cache_layout_and_attrs(built, cifar, predictor):
    with h5py.File(built, "r") as f:
        assert set(REQUIRED_ATTRS) <= set(f.attrs) and int(f.attrs["format_version"]) == 1
        assert bool(f.attrs["complete"]) is True
        fp = json.loads(f.attrs["fingerprint"])
        assert fp == dataset_fingerprint(cifar)
        labels_bytes = cifar.train.labels.numpy().astype("<i8").tobytes()
        assert fp["train_labels_sha256"] == hashlib.sha256(labels_bytes).hexdigest()
        assert json.loads(f.attrs["class_names"]) == list(CIFAR10_CLASSNAMES)
        assert json.loads(f.attrs["predictor"]) == predictor.spec()
        assert set(json.loads(f.attrs["versions"])) == {"bdsel", "torch", "open_clip", "h5py"}
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            assert (
                f[split]["logprobs"].shape == (n, 10) and f[split]["logprobs"].dtype == np.float32
            )
            assert f[split]["done"].dtype == np.bool_ and f[split]["done"][...].all()
        train = torch.from_numpy(f["train"]["logprobs"][...])
        test = torch.from_numpy(f["test"]["logprobs"][...])
        attrs = {
            k: float(f.attrs[k]) for k in ("train_accuracy", "test_accuracy", "mean_clean_logprob")
        }
    torch.testing.assert_close(
        train, predictor.image_logprobs(cifar.train, torch.arange(N_TRAIN)), atol=1e-6, rtol=0
    )
    assert attrs["train_accuracy"] == pytest.approx(
        float((train.argmax(1) == cifar.train.labels).double().mean())
    )
    assert attrs["test_accuracy"] == pytest.approx(
        float((test.argmax(1) == cifar.test.labels).double().mean())
    )
    clean = train.gather(1, cifar.train.labels[:, None]).double().mean()
    assert attrs["mean_clean_logprob"] == pytest.approx(float(clean), rel=1e-6)
    assert not partial_path(built).exists()
    info = read_cache_info(built)
    assert info["rows_done"] == info["rows"] == {"train": N_TRAIN, "test": N_TEST}


def test_temperature_is_applied_at_read_time(built, cifar):
    with h5py.File(built, "r") as f:
        raw = torch.from_numpy(f["train"]["logprobs"][...])
    assert torch.equal(load_zs_logprobs(built, cifar), raw)  # T = 1 is the identity
    hot = load_zs_logprobs(built, cifar, temperature=2.5)
    torch.testing.assert_close(
        hot.double(), torch.log_softmax(raw.double() / 2.5, dim=1), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(hot.exp().sum(1), torch.ones(N_TRAIN), atol=1e-5, rtol=0)
    entropy = lambda lp: -(lp.exp() * lp).sum(1)  # noqa: E731
    assert (entropy(hot) > entropy(raw)).all()  # a higher temperature flattens every row
    assert load_zs_logprobs(built, cifar, split="test", n_classes=10).shape == (N_TEST, 10)
    with pytest.raises(ValueError, match="temperature"):
        load_zs_logprobs(built, cifar, temperature=0.0)


class Killed(RuntimeError):
    pass


class Wrapped:
    """Delegates to a predictor, counting rows; raises after ``fail_after`` batches if set."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.batches, self.rows = inner, fail_after, 0, 0

    def spec(self):
        return self.inner.spec()

    def logprobs(self, split, rows):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise Killed("simulated kill")
        self.batches += 1
        self.rows += len(rows)
        return self.inner.logprobs(split, rows)


def read_all(path: Path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        # when it was made, and what it cost (seconds: a resumed cache's are its sessions' sum)
        attrs = {k: f.attrs[k] for k in f.attrs if k not in ("created_at", "predictor_seconds")}
        data = {f"{s}/{d}": f[s][d][...] for s in ("train", "test") for d in ("logprobs", "done")}
    return attrs, data


@pytest.mark.parametrize(("fail_after", "corrupt_done_rows"), [(1, False), (3, True), (6, False)])
def test_resume_after_kill_equals_uninterrupted(
    tmp_path, cifar, predictor, fail_after, corrupt_done_rows
):
    kw = {"batch_size": 8, "flush_every": 2}
    reference = tmp_path / "ref.h5"
    build_cache(reference, cifar, ClipZeroShot(predictor, cifar), **kw)
    path = tmp_path / "resumed.h5"
    with pytest.raises(Killed):
        build_cache(path, cifar, Wrapped(ClipZeroShot(predictor, cifar), fail_after), **kw)
    assert not path.exists() and partial_path(path).exists()
    done_rows = 8 * fail_after  # rows computed before the kill are kept
    info = read_cache_info(partial_path(path))
    assert info["rows_done"]["train"] + info["rows_done"]["test"] == done_rows
    assert info["complete"] is False
    with pytest.raises(CacheError, match=f"{N_TRAIN + N_TEST - done_rows} rows missing"):
        load_zs_logprobs(path, cifar)
    extra = 0
    if corrupt_done_rows:  # a hard kill can leave flags set over rows that never reached disk
        with h5py.File(partial_path(path), "r+") as f:
            f["train"]["logprobs"][:8] = 0.0
        extra = 8
    counting, out = Wrapped(ClipZeroShot(predictor, cifar)), io.StringIO()
    summary = build_cache(path, cifar, counting, **kw, progress=RowsBar(Console(file=out)))
    assert counting.rows == summary.rows_computed == N_TRAIN + N_TEST - done_rows + extra
    assert "resuming" in out.getvalue()
    ref_attrs, ref_data = read_all(reference)
    attrs, data = read_all(path)
    assert set(attrs) == set(ref_attrs) and all(
        np.array_equal(attrs[k], ref_attrs[k]) for k in attrs
    )
    for key in ref_data:
        assert np.array_equal(data[key], ref_data[key]), key
    assert not partial_path(path).exists()


def test_complete_cache_is_reused_and_foreign_one_refused(
    built, cifar, predictor, tmp_path, checkpoint
):
    path = copy_of(built, tmp_path)
    before = path.read_bytes()
    assert build_cache(path, cifar, ClipZeroShot(predictor, cifar)).rows_computed == 0
    assert path.read_bytes() == before
    other = ClipPredictor(TINY, str(checkpoint), predictor.class_names, list(CIFAR_TEMPLATES[:2]))
    with pytest.raises(CacheError, match="predictor differs in templates"):
        build_cache(path, cifar, ClipZeroShot(other, cifar))
    summary = build_cache(path, cifar, ClipZeroShot(other, cifar), overwrite=True)
    assert summary.rows_computed == N_TRAIN + N_TEST
    assert read_cache_info(path)["predictor"]["templates"] == list(CIFAR_TEMPLATES[:2])


def relabelled(ds: Dataset, **changes) -> Dataset:
    fields = {"name": ds.name, "train": ds.train, "test": ds.test, "class_names": ds.class_names}
    fields.update(changes)
    return Dataset(**fields, in_channels=3, image_size=32, mean=ds.mean, std=ds.std)


def test_fingerprint_mismatch_refused(built, cifar):
    shuffled = ImageSet(labels=cifar.train.labels.roll(1), images=cifar.train.images)
    cases = [
        (relabelled(cifar, train=shuffled), "train_labels_sha256 differs.*order or labelling"),
        (relabelled(cifar, class_names=list(reversed(CIFAR10_CLASSNAMES))), "class_names differs"),
        (relabelled(cifar, name="cifar100"), "dataset differs.*'cifar10'"),
        (relabelled(cifar, test=ImageSet(labels=cifar.test.labels[:10])), "n_test differs"),
    ]
    for ds, message in cases:
        with pytest.raises(CacheError, match=message):
            load_zs_logprobs(built, ds)
    assert load_zs_logprobs(built, relabelled(cifar)).shape == (N_TRAIN, 10)  # same data passes


def test_unusable_files_refused(built, cifar, predictor, tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        load_zs_logprobs(tmp_path / "nope.h5", cifar)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"definitely not HDF5 " * 200)
    with pytest.raises(CacheError, match="not a readable HDF5 file"):
        load_zs_logprobs(garbage, cifar)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(built.read_bytes()[: built.stat().st_size // 2])
    with pytest.raises(CacheError):
        load_zs_logprobs(truncated, cifar)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("train/logprobs", data=np.zeros((N_TRAIN, 10), np.float32))
    with pytest.raises(CacheError, match="not a bdsel zero-shot cache"):
        load_zs_logprobs(foreign, cifar)
    with pytest.raises(CacheError, match="holds 10 classes, expected 11"):
        load_zs_logprobs(built, cifar, n_classes=11)
    for edit, message in (
        (
            lambda f: f["train"]["logprobs"].__setitem__((3, 2), np.nan),
            "1 rows of /train/logprobs are not log-prob",
        ),
        (
            lambda f: f["train"]["logprobs"].__setitem__(4, f["train"]["logprobs"][4] * 2),
            "not log-prob",
        ),
        (lambda f: f["test"]["done"].__setitem__(7, False), "incomplete cache.*1 rows missing"),
        (lambda f: f.attrs.__setitem__("complete", False), "incomplete cache.*0 rows missing"),
    ):
        path = copy_of(built, tmp_path)
        with h5py.File(path, "r+") as f:
            edit(f)
        with pytest.raises(CacheError, match=message):
            load_zs_logprobs(path, cifar)
    # An unreadable partial file (killed mid-write) is discarded and the cache rebuilt.
    path = tmp_path / "fresh.h5"
    partial_path(path).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    summary = build_cache(
        path,
        cifar,
        ClipZeroShot(predictor, cifar),
        progress=RowsBar(Console(file=io.StringIO()), show=False),
    )
    assert summary.rows_computed == N_TRAIN + N_TEST and load_zs_logprobs(path, cifar).shape == (
        N_TRAIN,
        10,
    )


def test_predictor_output_is_checked(tmp_path, cifar):
    class Logits:
        def spec(self):
            return {"kind": "fake"}

        def logprobs(self, split, rows):
            return torch.ones(len(rows), 10)  # logits, not log-probabilities

    with pytest.raises(ValueError, match="not finite log-probabilities"):
        build_cache(tmp_path / "c.h5", cifar, Logits())


def test_bf16_autocast_is_close_to_fp32_and_recorded(checkpoint, predictor, cifar):
    bf16 = ClipPredictor(
        TINY, str(checkpoint), predictor.class_names, predictor.templates, precision="bf16"
    )
    rows = torch.arange(8)
    fp32, low = predictor.image_logprobs(cifar.train, rows), bf16.image_logprobs(cifar.train, rows)
    assert low.dtype == torch.float32 and not torch.equal(low, fp32)  # autocast really ran
    torch.testing.assert_close(low, fp32, atol=0.05, rtol=0)
    torch.testing.assert_close(low.exp().sum(1), torch.ones(8), atol=1e-5, rtol=0)
    assert bf16.spec()["precision"] == "bf16" and bf16.spec() != predictor.spec()


def test_offline_clip_weights_fail_in_seconds_in_one_whole_line(monkeypatch: pytest.MonkeyPatch):
    from bdsel.predictors import clip

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download although the host cannot be reached")

    monkeypatch.setattr("open_clip.pretrained.download_pretrained", no_download)
    monkeypatch.setattr(clip, "_cached_weights", lambda cfg: None)
    monkeypatch.setattr(clip, "_reachable", lambda host, timeout=2.0: False)
    with pytest.raises(ValueError) as info:
        clip._fetch_pretrained("RN50", "openai")
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message
    assert message.endswith("--set zeroshot.pretrained=/path/to/RN50-openai.pt")

    def long_failure(*args, **kwargs):
        raise OSError("An error happened while trying to locate the file on the Hub " + "x" * 200)

    monkeypatch.setattr(clip, "_reachable", lambda host, timeout=2.0: True)
    monkeypatch.setattr("open_clip.pretrained.download_pretrained", long_failure)
    with pytest.raises(ValueError, match=r"\(OSError: An error happened while trying .*x{200}\)"):
        clip._fetch_pretrained("RN50", "openai")  # the reason whole, not cut mid-word
