"""The public API in a user's own loop (issue 26): the last-layer hook on torchvision and timm
models, selectors built from keyword settings that pick exactly as ``bdsel train`` does, a
state-dict round trip, the posterior under 2-process gloo, zero-shot caches of a user's
Dataset, clear errors for bad calls, and the shipped example end to end."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

import bdsel
from bdsel.distributed import shutdown
from bdsel.forward import LastLayerHook, scoring
from bdsel.table import ZeroShotTable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fashion_mnist_resnet.py"
N_ROWS, N_CLASSES, D = 200, 5, 16


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def zs_table(seed: int = 0) -> torch.Tensor:
    return torch.log_softmax(3 * torch.randn(N_ROWS, N_CLASSES, generator=gen(seed)), dim=1)


def batch(seed: int, n: int = 40, d: int = D):
    """Candidates: random global indices, labels, logits [n, C] and features [n, d]."""
    g = gen(seed)
    indices = torch.randperm(N_ROWS, generator=g)[:n]
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    return (
        indices,
        labels,
        2 * torch.randn(n, N_CLASSES, generator=g),
        torch.randn(n, d, generator=g),
    )


def bayesian(**kw) -> bdsel.Selector:
    return bdsel.create_selector(
        "bayesian", n_selected=8, zs_logprobs=zs_table(), n_features=D, **kw
    )


# ----------------------------------------------------------------------------- the hook


def test_hook_captures_the_input_of_a_torchvision_resnets_fc():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    hook = LastLayerHook(model)
    assert hook.layer_name == "fc" and hook.n_features == 512 and hook.n_classes == 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        m = model
        h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        h = torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(h))))), 1)
    got_logits, got_features = hook.take()
    assert torch.equal(got_features, h) and torch.equal(got_logits, logits)
    assert torch.equal(logits, model.fc(h))
    hook.remove()
    model(torch.randn(2, 3, 32, 32))
    assert hook.features.shape[0] == 3  # removed: the next forward is not captured


@pytest.mark.parametrize(("name", "layer"), [("resnet10t", "fc"), ("vit_tiny_patch16_224", "head")])
def test_hook_captures_the_pre_logits_of_timm_models(name: str, layer: str):
    import timm

    torch.manual_seed(0)
    kw = {"img_size": 32} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=6, **kw).eval()
    hook = LastLayerHook(model)
    assert hook.layer_name == layer  # the head, not the last block's MLP
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.equal(hook.features, pre_logits) and torch.equal(hook.logits, logits)


def test_the_hook_and_scoring_context_refuse_or_restore_cleanly():
    with pytest.raises(ValueError, match="has no nn.Linear"):
        LastLayerHook(nn.Sequential(nn.Conv2d(1, 2, 3)))
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"layer='head'.*its nn.Linear layers: 0, 2"):
        LastLayerHook(model, layer="head")
    hook = LastLayerHook(model)
    with pytest.raises(RuntimeError, match="no forward pass through the layer '2' yet"):
        hook.take()
    bn = model[1]
    before = bn.running_mean.clone()
    with scoring(model, precision="fp32"):
        out = model(torch.randn(16, 4) + 5)
    assert not out.requires_grad and torch.equal(bn.running_mean, before)  # stats untouched
    assert bn.track_running_stats and model.training  # restored
    model.eval()
    with scoring(model, bn="batch"):
        model(torch.randn(4, 4))
    assert not model.training


# ----------------------------------------------------------------------------- selectors


def test_every_method_is_created_from_keyword_settings():
    table = zs_table()
    settings = {
        "bayesian": {"zs_logprobs": table, "n_features": D},
        "rho_loss": {"il_logprobs": table},
        "irreducible_loss": {"il_logprobs": table},
        "svp": {"coreset": torch.arange(0, N_ROWS, 2)},
        "infobatch": {"n_rows": N_ROWS, "epochs": 4},
    }
    indices, labels, logits, features = batch(0)
    for name in bdsel.list_selectors():
        selector = bdsel.create_selector(name, n_selected=8, **settings.get(name, {}))
        selector.prepare()
        selector.set_epoch(0)
        selection = selector.select(indices, labels, logits, features, generator=gen(1))
        n = 40 if name in ("full", "infobatch") else 8
        assert selection.positions.shape == (n,), name
        selector.observe(indices[:8], labels[:8], logits[:8], features[:8])
        assert set(bdsel.selector_settings(name)) >= {"n_selected", "seed"}


def test_the_public_selector_picks_what_bdsel_trains_loop_picks(
    monkeypatch: pytest.MonkeyPatch, tiny_config_values: dict, tmp_path: Path
):
    from bdsel.assemble import build_run
    from bdsel.configure import load_config
    from bdsel.train import train

    zs = {}

    def lookups(names, config, data, device):
        zs["zs_logprobs"] = torch.log_softmax(
            3 * torch.randn(len(data.dataset.train), data.dataset.n_classes, generator=gen(5)), 1
        )
        return dict(zs)

    monkeypatch.setattr("bdsel.assemble.build_lookups", lookups)
    no_cache = {"predictor_s": 0.0, "predictor_test_acc": None}  # the table above has no file
    monkeypatch.setattr("bdsel.predict.one_time_cost", lambda config, names: no_cache)
    values = dict(
        tiny_config_values, select={"method": "bayesian", "n_candidates": 64, "n_selected": 16}
    )
    cfg = load_config(values=values)
    run = build_run(cfg)
    calls: list[tuple] = []
    real_select, real_observe = run.selector.select, run.selector.observe

    def spy_select(indices, labels, logits=None, features=None, *, generator=None, inputs=None):
        state = generator.get_state()
        selection = real_select(
            indices, labels, logits, features, generator=generator, inputs=inputs
        )
        calls.append(("select", indices, labels, logits, features, state, selection.positions))
        return selection

    def spy_observe(*args):
        calls.append(("observe", *args))
        real_observe(*args)

    run.selector.select, run.selector.observe = spy_select, spy_observe
    monkeypatch.setattr("bdsel.train.build_run", lambda *a, **k: run)
    train(cfg, tmp_path / "run")
    assert sum(c[0] == "select" for c in calls) == cfg.train.epochs * run.steps_per_epoch

    public = bdsel.create_selector(
        "bayesian", n_selected=16, zs_logprobs=zs["zs_logprobs"], n_features=run.model.n_features
    )
    for call in calls:
        if call[0] == "select":
            _, indices, labels, logits, features, state, positions = call
            g = torch.Generator().manual_seed(0)
            g.set_state(state)
            got = public.select(indices, labels, logits, features, generator=g).positions
            assert torch.equal(got, positions)
        else:
            public.observe(*call[1:])
    assert public.posterior.n_updates == run.selector.posterior.n_updates > 0
    assert torch.equal(public.posterior.A, run.selector.posterior.A)


def test_a_state_dict_round_trip_continues_identically():
    a = bayesian()
    for step in range(3):
        indices, labels, logits, features = batch(step)
        pos = a.select(indices, labels, logits, features, generator=gen(step)).positions
        a.observe(indices[pos], labels[pos], logits[pos], features[pos])
    b = bayesian()
    b.load_state_dict(a.state_dict())
    for step in range(3, 6):
        indices, labels, logits, features = batch(step)
        pa = a.select(indices, labels, logits, features, generator=gen(step)).positions
        pb = b.select(indices, labels, logits, features, generator=gen(step)).positions
        assert torch.equal(pa, pb)
        a.observe(indices[pa], labels[pa], logits[pa], features[pa])
        b.observe(indices[pb], labels[pb], logits[pb], features[pb])
    assert torch.equal(a.posterior.A, b.posterior.A) and torch.equal(a.posterior.G, b.posterior.G)
    fresh = bayesian()
    indices, labels, logits, features = batch(9)
    pf = fresh.select(indices, labels, logits, features, generator=gen(9)).positions
    assert not torch.equal(
        pf, a.select(indices, labels, logits, features, generator=gen(9)).positions
    )


@pytest.mark.parametrize("name", ["uniform", "bayesian", "grad_norm_is"])
def test_a_restored_selector_picks_as_the_uninterrupted_one_with_the_default_generator(name: str):
    """No generator passed anywhere: the selector's own random stream is in its state."""

    def make() -> bdsel.Selector:
        kw = {"zs_logprobs": zs_table(), "n_features": D} if name == "bayesian" else {}
        return bdsel.create_selector(name, n_selected=8, **kw)

    a = make()
    for step in range(3):
        indices, labels, logits, features = batch(step)
        pos = a.select(indices, labels, logits, features).positions
        a.observe(indices[pos], labels[pos], logits[pos], features[pos])
    b = make()
    b.load_state_dict(torch.load(_saved(a.state_dict()), weights_only=False))
    fresh = make()
    same_as_fresh = []
    for step in range(3, 13):
        indices, labels, logits, features = batch(step)
        pa = a.select(indices, labels, logits, features).positions
        pb = b.select(indices, labels, logits, features).positions
        pf = fresh.select(indices, labels, logits, features).positions
        assert torch.equal(pa, pb), step
        same_as_fresh.append(torch.equal(pa, pf))
        for s, p in ((a, pa), (b, pb)):
            s.observe(indices[p], labels[p], logits[p], features[p])
    assert not all(same_as_fresh)  # without the saved stream the picks would differ


def _saved(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _gloo_worker(rank: int, rendezvous: str, out: str) -> None:
    # A file rendezvous: no port to find free and lose to another process before binding it.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    selector = bayesian()
    for step in range(4):
        indices, labels, logits, features = batch(10 * step + rank)  # each rank its own batch
        pos = selector.select(indices, labels, logits, features, generator=gen(step)).positions
        selector.observe(indices[pos], labels[pos], logits[pos], features[pos])
    torch.save(selector.state_dict(), f"{out}.{rank}")
    shutdown()  # bdsel's own teardown: the ranks meet, then leave


def test_under_two_process_gloo_both_ranks_hold_the_same_posterior(tmp_path: Path):
    out = str(tmp_path / "selector")
    mp.spawn(_gloo_worker, args=(str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    states = [torch.load(f"{out}.{r}", weights_only=False)["posterior"] for r in (0, 1)]
    assert states[0]["n_updates"] == 4
    for key in ("A", "G"):
        assert torch.equal(states[0][key], states[1][key]), key
    alone = bayesian()  # without the other rank's points the factors differ
    indices, labels, logits, features = batch(0)
    pos = alone.select(indices, labels, logits, features, generator=gen(0)).positions
    alone.observe(indices[pos], labels[pos], logits[pos], features[pos])
    assert not torch.allclose(alone.posterior.A, states[0]["A"])


def test_bad_calls_name_the_argument():
    selector = bayesian()
    indices, labels, logits, features = batch(0)
    cases = [
        (lambda: selector.select(indices, labels[:5], logits, features), r"labels: expected int64 \[40\]"),
        (lambda: selector.select(indices, labels), "logits: select.method=bayesian scores"),
        (lambda: selector.select(indices, labels, logits, features[:, :4]), "features: width 4"),
        (lambda: selector.select(indices, labels, logits[:, :3], features), "logits: 3 classes"),
        (lambda: selector.select(indices.float(), labels, logits, features), "indices: expected integer"),
        (lambda: selector.select(indices + N_ROWS, labels, logits, features), r"indices: \d+ is outside"),
        (lambda: selector.select(indices[:4], labels[:4], logits[:4], features[:4]), "fewer than n_selected=8"),
        (lambda: selector.observe(indices, labels, logits, features[:3]), r"features: expected \[40, D\]"),
        (lambda: bdsel.create_selector("bayesian", n_selected=8, zs_logprobs=zs_table()), "missing setting 'n_features'"),
        (lambda: bdsel.create_selector("uniform", n_selected=8, alpha=0.3), r"unknown setting 'alpha'; its settings: n_selected"),
        (lambda: bdsel.create_selector("uniform", n_selected=0), "n_selected: expected a positive int"),
        (lambda: bdsel.create_selector("nope", n_selected=8), "unknown selection method 'nope'"),
        (lambda: bayesian(alpha=2.0), r"alpha: expected a weight in \[0, 1\]"),
        (lambda: bdsel.create_selector("svp", n_selected=8).prepare(), "svp: pass coreset="),
        (lambda: ZeroShotTable(zs_table())[torch.tensor([N_ROWS])], "outside the table of 200 rows"),
    ]  # fmt: skip
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    svp = bdsel.create_selector("svp", n_selected=8)
    with pytest.raises(RuntimeError, match="prepare"):
        svp.epoch_order(torch.arange(10), gen(0))


def test_out_of_range_and_non_finite_inputs_are_refused_on_cpu():
    """Labels outside the classes, NaN or inf logits and features, mismatched lengths, and
    tables that are not log-probabilities: each a ValueError naming the argument; after a
    refused call the selector selects as before."""
    selector = bayesian()
    indices, labels, logits, features = batch(0)
    bad_label, nan_logits, inf_features = labels.clone(), logits.clone(), features.clone()
    bad_label[7] = N_CLASSES
    nan_logits[3, 1] = float("nan")
    inf_features[[5, 9], 0] = float("inf")
    lp = zs_table()
    probs, not_normalised, nan_rows = lp.exp(), lp + 0.5, lp.clone()
    nan_rows[[4, 8]] = float("nan")
    cases = [
        (lambda: selector.select(indices, bad_label, logits, features), r"labels: 5 is not a class \(classes 0..4\)"),
        (lambda: selector.select(indices, labels - 1, logits, features), "labels: -1 is not a class"),
        (lambda: selector.observe(indices, bad_label, logits, features), "labels: 5 is not a class"),
        (lambda: selector.select(indices, labels, nan_logits, features), r"logits: 1 of 40 rows hold NaN or inf \(the first at position 3\)"),
        (lambda: selector.select(indices, labels, logits, inf_features), "features: 2 of 40 rows hold NaN or inf .the first at position 5"),
        (lambda: selector.observe(indices, labels, logits, inf_features), "features: 2 of 40 rows"),
        (lambda: selector.observe(indices[:0], labels[:0], logits[:0], features[:0]), "observe needs the points just trained on, got none"),
        (lambda: ZeroShotTable.calibrated(lp[:100], torch.zeros(50, dtype=torch.long)), r"labels: expected one label per row of logprobs, \[100\], got \(50,\)"),
        (lambda: ZeroShotTable.calibrated(lp, torch.full((N_ROWS,), 7)), r"labels: 7 is not a class \(classes 0..4\)"),
        (lambda: ZeroShotTable(torch.full((N_ROWS, N_CLASSES), float("nan"))), "200 of 200 rows are not log-probabilities"),
        (lambda: ZeroShotTable(nan_rows), "2 of 200 rows are not log-probabilities .* the first is row 4"),
        (lambda: ZeroShotTable(probs), "every row is a probability distribution"),
        (lambda: ZeroShotTable.calibrated(probs, labels.repeat(5)), "every row is a probability distribution"),
        (lambda: bdsel.create_selector("bayesian", n_selected=8, zs_logprobs=not_normalised, n_features=D), "zs_logprobs: 200 of 200 rows are not log-probabilities"),
        (lambda: bdsel.create_selector("rho_loss", n_selected=8, il_logprobs=probs), "il_logprobs: 200 of 200 rows"),
    ]  # fmt: skip
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    fresh = bayesian()
    for s in (selector, fresh):  # the refused calls changed nothing
        s.observe(indices[:8], labels[:8], logits[:8], features[:8])
    got = selector.select(indices, labels, logits, features, generator=gen(1)).positions
    want = fresh.select(indices, labels, logits, features, generator=gen(1)).positions
    assert torch.equal(got, want)


def test_where_inputs_are_not_checked_a_non_finite_point_poisons_nothing():
    """On a GPU (checks would sync the host) and in bdsel train's loop, nothing refuses NaN:
    a NaN score ranks last, and a point with a NaN or inf feature or probability adds
    nothing to the posterior (float64, against the update over the finite points only)."""
    from bdsel.laplace import LastLayerLaplace
    from bdsel.selection import top_k_positions

    scores = torch.tensor([0.5, float("nan"), 2.0, -1.0, float("nan"), 1.0], dtype=torch.float64)
    assert sorted(top_k_positions(scores, 3).tolist()) == [0, 2, 5]

    g = gen(4)
    h = torch.randn(12, D, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(12, N_CLASSES, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, N_CLASSES, (12,), generator=g)
    bad_h, bad_p = h.clone(), p.clone()
    bad_h[2, 3], bad_p[7, 0] = float("nan"), float("inf")
    for fisher in ("empirical", "ggn"):
        post = LastLayerLaplace(D, N_CLASSES, fisher=fisher, dtype=torch.float64)
        post.update(bad_h, bad_p, y)
        keep = torch.tensor([i not in (2, 7) for i in range(12)])
        hk, pk, yk = h[keep], p[keep], y[keep]
        assert torch.allclose(post.A, hk.T @ hk / 12, atol=1e-12)
        if fisher == "empirical":
            r = pk - torch.nn.functional.one_hot(yk, N_CLASSES).double()
            g_ref = r.T @ r / 12
        else:
            g_ref = (torch.diag(pk.sum(0)) - pk.T @ pk) / 12
        assert torch.allclose(post.G, g_ref, atol=1e-12)

    selector = bayesian()
    selector.check_finite = False  # as in bdsel train, and as on a GPU
    indices, labels, logits, features = batch(0)
    logits[0], features[1] = float("nan"), float("inf")
    for step in range(3):
        selection = selector.select(indices, labels, logits, features, generator=gen(step))
        assert not {0, 1} & set(selection.positions.tolist())
        pos = selection.positions
        selector.observe(indices[:8], labels[:8], logits[:8], features[:8])  # NaN rows too
        assert (
            torch.isfinite(selector.posterior.A).all()
            and torch.isfinite(selector.posterior.G).all()
        )
        assert pos.unique().numel() == 8


# ----------------------------------------------------------------------------- tables and caches


class _Linear:
    """A user's own 'zero-shot' model: a fixed linear map of the pixels, with a spec."""

    def __init__(self, n_pixels: int) -> None:
        self.w = torch.randn(n_pixels, N_CLASSES, generator=gen(3)) / 10
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.flatten(1).float() @ self.w

    def spec(self) -> dict:
        return {"kind": "linear-test", "seed": 3}


def _user_data(n: int = 70):
    x = torch.randint(0, 255, (n, 1, 6, 6), dtype=torch.uint8, generator=gen(1))
    return x, torch.randint(0, N_CLASSES, (n,), generator=gen(2))


def test_a_zero_shot_cache_of_a_users_dataset(tmp_path: Path):
    x, y = _user_data()
    predictor = _Linear(36)
    path = tmp_path / "mine.h5"
    names = [f"c{i}" for i in range(N_CLASSES)]
    summary = bdsel.write_zeroshot_cache(
        path,
        predictor,
        TensorDataset(x, y),
        labels=y,
        class_names=names,
        batch_size=16,
        progress=False,
    )
    assert summary.n_train == 70 and summary.n_test == 0 and summary.temperature > 0
    expected = torch.log_softmax(predictor(x), dim=1)
    plain = ZeroShotTable.from_cache(path, temperature=1.0, labels=y)
    torch.testing.assert_close(plain.logprobs, expected, rtol=0, atol=1e-6)
    auto = ZeroShotTable.from_cache(path)  # temperature="auto": the fit with label noise
    assert auto.temperature == pytest.approx(summary.temperature_denoised)
    torch.testing.assert_close(auto.logprobs, torch.log_softmax(expected / auto.temperature, 1))
    with pytest.raises(ValueError, match="labels differ"):
        ZeroShotTable.from_cache(path, labels=(y + 1) % N_CLASSES)


def test_a_users_cache_resumes_after_an_interruption_and_equals_an_uninterrupted_one(
    tmp_path: Path,
):
    import h5py

    x, y = _user_data()
    names = [f"c{i}" for i in range(N_CLASSES)]
    whole = tmp_path / "whole.h5"
    bdsel.write_zeroshot_cache(whole, _Linear(36), TensorDataset(x, y), labels=y,
                               class_names=names, batch_size=16, progress=False)  # fmt: skip

    class Stops(_Linear):
        def __call__(self, images):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().__call__(images)

    path = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        bdsel.write_zeroshot_cache(path, Stops(36), TensorDataset(x, y), labels=y,
                                   class_names=names, batch_size=16, progress=False)  # fmt: skip
    assert not path.exists() and path.with_name("cut.h5.partial").exists()
    again = _Linear(36)
    bdsel.write_zeroshot_cache(path, again, TensorDataset(x, y), labels=y, class_names=names,
                               batch_size=16, progress=False)  # fmt: skip
    assert again.calls < 5  # resumed: only the rows not done were computed
    with h5py.File(whole) as a, h5py.File(path) as b:
        assert np.array_equal(a["train/logprobs"][...], b["train/logprobs"][...])


def test_a_clip_cache_of_a_users_pil_images(tmp_path: Path):
    from conftest import write_tiny_clip
    from PIL import Image

    arch, checkpoint = write_tiny_clip(tmp_path, "tiny-clip-user")
    names = ["cat", "dog", "car"]
    clip = bdsel.ClipPredictor(arch.stem, str(checkpoint), names, ["a photo of a {}."])
    x, _ = _user_data(12)
    y = torch.arange(12) % 3
    images = [Image.fromarray(img[0].numpy()) for img in x]

    class PilImages(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], int(y[i])

    path = tmp_path / "clip.h5"
    bdsel.write_zeroshot_cache(path, clip, PilImages(), labels=y, class_names=names, progress=False)
    table = ZeroShotTable.from_cache(path, temperature=1.0)
    torch.testing.assert_close(table.logprobs, clip(images), rtol=0, atol=1e-5)
    assert table.logprobs.shape == (12, 3)


def test_indexed_dataset_puts_the_global_index_first():
    x, y = _user_data(5)
    data = bdsel.IndexedDataset(TensorDataset(x, y))
    i, image, label = data[3]
    assert i == 3 and torch.equal(image, x[3]) and label == y[3]
    relabelled = bdsel.IndexedDataset(TensorDataset(x, y), labels=torch.zeros(5, dtype=torch.long))
    assert relabelled[4][2] == 0
    with pytest.raises(ValueError, match="labels: 2 labels for a dataset of 5"):
        bdsel.IndexedDataset(TensorDataset(x, y), labels=torch.zeros(2))


def test_calibrated_table_fits_a_known_temperature():
    g = gen(0)
    logits = 4 * torch.randn(4000, N_CLASSES, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(logits / 2.0, 1), 1, generator=g).squeeze(1)
    table = ZeroShotTable.calibrated(logits, y, label_noise=False)
    assert table.temperature == pytest.approx(2.0, rel=0.1)
    torch.testing.assert_close(
        table.logprobs, torch.log_softmax(logits.float() / table.temperature, 1)
    )


# ----------------------------------------------------------------------------- the example


def _example(fashion_dir: Path, *extra: str) -> str:
    args = ["--root", str(fashion_dir), "--train-size", "1200", "--epochs", "2", "--candidates",
            "64", "--selected", "16", "--crossfit-epochs", "4", "--noise", "0.3", *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=fashion_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_example_trains_on_fewer_mislabeled_points_than_the_data_holds(fashion_dir: Path):
    out = _example(fashion_dir)
    last = out.strip().splitlines()[-1]
    match = re.search(r"epoch 2: test accuracy ([\d.]+)%, mislabeled among the selected ([\d.]+)% "
                      r"\(of the data: ([\d.]+)%\)", last)  # fmt: skip
    assert match, out
    acc, share, base = (float(v) for v in match.groups())
    assert 25 < base < 35 and share < base / 2, last
    assert acc > 20, last


@pytest.mark.parametrize(
    "name", ["fashion_mnist_resnet.py", "lightning_fashion_mnist.py", "hf_trainer_fashion_mnist.py"]
)
def test_each_example_adds_at_most_15_bdsel_lines_and_is_the_documented_one(name: str):
    text = (ROOT / "examples" / name).read_text()
    marked = [line for line in text.splitlines() if "# bdsel" in line]
    assert 5 <= len(marked) <= 15
    unmarked = [line for line in text.splitlines() if "bdsel." in line and "# bdsel" not in line]
    assert unmarked == [], unmarked  # every line that calls bdsel is counted
    doc = (ROOT / "docs" / "library.md").read_text()
    block = doc.split(f"<!-- example: examples/{name} -->\n```python\n")[1]
    assert block.split("```\n")[0] == text  # the page shows the tested file, verbatim


def test_library_md_names_every_setting_of_every_method():
    """The settings table in docs/library.md against the registry: a setting added to a
    method without a word in the docs fails here."""
    doc = (ROOT / "docs" / "library.md").read_text()
    section = doc.split("## Every method's settings")[1].split("\n## ")[0]
    warmup = {"warmup_epochs"}
    for name in bdsel.list_selectors():
        row = next((line for line in section.splitlines() if f"`{name}`" in line), None)
        assert row is not None, name
        for setting in bdsel.selector_settings(name):
            if setting == "seed" or (setting in warmup and "warm-up" in row):
                continue
            assert f"`{setting}`" in row, (name, setting)
