"""The crossfit predictor: every training row predicted by a model that never trained on it."""

import json
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from bdsel_cli.main import app
from typer.testing import CliRunner

from bdsel.configure import load_config
from bdsel.data import derive_run_data, load_dataset, make_image_source
from bdsel.predictors import crossfit_fit as crossfit_module
from bdsel.predictors.crossfit import CrossfitPredictor
from bdsel.predictors.crossfit_fit import assign_folds

runner = CliRunner()


@pytest.fixture
def crossfit_values(tiny_config_values: dict, tmp_path: Path, monkeypatch) -> dict:
    # On tiny data the channel round's channel may leave a class unidentifiable; these tests
    # are about the rows each round's models see, so every refit round runs.
    monkeypatch.setattr(crossfit_module, "identifiable", lambda t: True)
    values = dict(tiny_config_values)
    values["zeroshot"] = {
        "predictor": "crossfit",
        "cache": str(tmp_path / "cf.h5"),
        "folds": 3,
        "epochs": 2,
        "patience": 1,
        "batch_size": 64,
        "rounds": 2,
        "channel_epochs": 1,
    }
    return values


def test_folds_partition_the_training_subset():
    train_idx = torch.tensor([3, 5, 8, 13, 21, 34, 55, 89, 144, 233])
    folds = assign_folds(train_idx, 3, seed=4)
    assert sorted(torch.cat(folds).tolist()) == train_idx.tolist()
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert [f.tolist() for f in folds] == [f.tolist() for f in assign_folds(train_idx, 3, seed=4)]


@pytest.mark.parametrize(
    "folds, rounds, channel_folds",
    [(2, 1, 1), (3, 2, 1), (3, 2, 2), (3, 2, 3), (2, 3, 1), (2, 3, 2)],
)
def test_no_row_is_predicted_by_a_model_that_trained_on_it(
    crossfit_values: dict, folds: int, rounds: int, channel_folds: int
):
    values = dict(crossfit_values)
    values["zeroshot"] = dict(values["zeroshot"])
    values["zeroshot"].update(folds=folds, rounds=rounds, channel_folds=channel_folds)
    cfg = load_config(values=values)
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(data.dataset, torch.device("cpu"))
    original = source.iter_batches
    fits: list[dict] = []  # per model trained, in order: its round, fold, rows, loss, epochs

    def spy(split, order, batch_size, **kw):
        if kw.get("generator") is not None:  # training batches are the augmented ones
            fits[-1]["seen"].update(order.tolist())
        yield from original(split, order, batch_size, **kw)

    source.iter_batches = spy
    predictor = CrossfitPredictor(cfg, data, source)
    crossfit = predictor.crossfit
    real_supervised = crossfit_module.fit_supervised

    def fit_supervised(*args, **kw):
        r = crossfit.rounds_done
        fits.append({
            "round": r, "fold": sum(f["round"] == r for f in fits), "seen": set(),
            "epochs": kw["epochs"], "corrected": kw["loss"] is not torch.nn.functional.cross_entropy,
        })  # fmt: skip
        return real_supervised(*args, **kw)

    crossfit_module.fit_supervised = fit_supervised
    try:
        predictor.fit()
    finally:
        crossfit_module.fit_supervised = real_supervised
    channel_round = rounds > 1  # the first round only estimates the channel
    per_round = [channel_folds if r == 0 and channel_round else folds for r in range(rounds)]
    assert [f["round"] for f in fits] == [r for r in range(rounds) for _ in range(per_round[r])]
    assert len(crossfit.models) == folds
    everything = set(data.train_idx.tolist())
    for f in fits:
        r, k, seen = f["round"], f["fold"], f["seen"]
        own = set(crossfit.folds[k].tolist())
        assert seen and not seen & own  # model k of every round: never its own fold
        assert seen | own == everything  # every other fold's row
        assert f["corrected"] == (r > 0)  # a later round trains through the channel
        assert f["epochs"] == (1 if r == 0 and channel_round else 2)
    # Which model predicts each training row: the last round's of its fold.
    rows = data.train_idx[:40]
    out = predictor.logprobs("train", rows)
    from bdsel.evaluation import predict_logprobs

    for k, model in enumerate(crossfit.models):
        own = crossfit.fold_of[rows] == k
        expected = predict_logprobs(model, source, "train", rows[own], 256)
        torch.testing.assert_close(out[own], expected)
    # Rows outside the training subset (the test set): the mean of the models' probabilities.
    test_rows = torch.arange(5)
    per_model = torch.stack(
        [predict_logprobs(m, source, "test", test_rows, 256) for m in crossfit.models]
    )
    mean = per_model.exp().mean(0).log()
    torch.testing.assert_close(predictor.logprobs("test", test_rows), mean, atol=1e-5, rtol=0)


def test_a_skipped_forward_refit_completes_its_channel_round(
    crossfit_values: dict, tmp_path: Path, monkeypatch
):
    # The channel round trained fold 0's model only; where its channel leaves a class
    # unidentifiable the first round stands, so it trains the other folds' models as it would
    # have: every fold gets a model that never saw it, the same as a one-round predictor's.
    monkeypatch.setattr(crossfit_module, "identifiable", lambda t: False)
    cfg = load_config(values=crossfit_values, overrides=["zeroshot.channel_epochs=2"])
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(data.dataset, torch.device("cpu"))
    predictor = CrossfitPredictor(cfg, data, source)
    fit = predictor.crossfit
    assert len(fit.models) == 1  # the channel round's
    predictor.fit_or_load(tmp_path / "w.pt")
    assert fit.refit_skipped and fit.rounds_done == 1
    assert len(fit.models) == 3 and len(fit.fold_epochs) == 3
    spec = predictor.spec()
    assert spec["refit_skipped"] is True and spec["refit_noise"] is None
    assert spec["refit_channel"] is None and 0 < spec["concentration"] <= 1
    one = load_config(values=crossfit_values, overrides=["zeroshot.rounds=1"])
    single = CrossfitPredictor(one, data, source)
    rows = torch.cat([data.train_idx[:50], torch.arange(5)])
    for split in ("train", "test"):
        torch.testing.assert_close(single.logprobs(split, rows), predictor.logprobs(split, rows))
    # Reloaded (a cache write killed after the fit), the skip stands: the refit is not retried
    # on the completed round's K models, whose channel would be another estimate.
    monkeypatch.setattr(crossfit_module, "identifiable", lambda t: True)
    fits: list[str] = []
    real_supervised = crossfit_module.fit_supervised
    monkeypatch.setattr(crossfit_module, "fit_supervised",
                        lambda *a, **kw: fits.append(kw["description"]) or real_supervised(*a, **kw))  # fmt: skip
    reloaded = CrossfitPredictor(cfg, data, source)
    reloaded.fit_or_load(tmp_path / "w.pt")
    assert fits == [] and reloaded.crossfit.refit_skipped and reloaded.spec() == spec
    assert torch.equal(reloaded.logprobs("train", rows), predictor.logprobs("train", rows))


class _Kill(KeyboardInterrupt):
    pass


def _kill_round_two(monkeypatch) -> list[str]:
    """Make crossfit's fits raise _Kill in the first model of round 2 (however many the first
    round trained); returns the list of the fits' descriptions, as they start."""
    real_supervised = crossfit_module.fit_supervised
    fits: list[str] = []
    killed = []

    def killing_supervised(*args, **kw):
        fits.append(kw["description"])
        if "round 2/2" in kw["description"] and not killed:  # once
            killed.append(True)
            raise _Kill
        return real_supervised(*args, **kw)

    monkeypatch.setattr(crossfit_module, "fit_supervised", killing_supervised)
    return fits


def test_crossfit_cache_resumes_after_a_kill(crossfit_values: dict, tmp_path: Path, monkeypatch):
    cfg_path = tmp_path / "cf.yaml"
    cfg_path.write_text(yaml.safe_dump(crossfit_values))
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert "held-out fold accuracy" in " ".join(result.output.split())
    with h5py.File(tmp_path / "cf.h5") as f:
        full = {s: f[f"{s}/logprobs"][...] for s in ("train", "test")}
        spec = json.loads(f.attrs["predictor"])
        temperature = float(f.attrs["temperature"])
    assert spec["kind"] == "crossfit" and len(spec["fold_epochs"]) == 3
    assert 0.01 < temperature < 100
    # The same command again finds the complete cache and leaves it as it is (no refit).
    before = (tmp_path / "cf.h5").stat().st_mtime_ns
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cf.h5").stat().st_mtime_ns == before
    check_label_noise_fit(cfg_path, tmp_path / "cf.h5", full, temperature)

    # Kill mid-rows: the second write of rows raises; the weights and the partial file stay.
    other = dict(
        crossfit_values, zeroshot=dict(crossfit_values["zeroshot"], cache=str(tmp_path / "k.h5"))
    )
    cfg2 = tmp_path / "k.yaml"
    cfg2.write_text(yaml.safe_dump(other))
    import bdsel.cache.writer as cache_module

    real_fill = cache_module._fill_split
    calls = {"n": 0}

    def killing_fill(f, split, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # after the train rows, before the test rows
            raise _Kill
        return real_fill(f, split, *args, **kw)

    monkeypatch.setattr(cache_module, "_fill_split", killing_fill)
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg2)])
    assert result.exit_code == 130
    assert (tmp_path / "k.h5.partial").exists() and not (tmp_path / "k.h5").exists()
    monkeypatch.setattr(cache_module, "_fill_split", real_fill)
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg2)])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "k.h5") as f:
        for s in ("train", "test"):
            assert (f[f"{s}/logprobs"][...] == full[s]).all(), s
        assert float(f.attrs["temperature"]) == temperature

    # Kill between the rounds (in round 2's first model): round 1's models are kept, and the
    # resumed command trains round 2 only, to the same cache.
    third = dict(
        crossfit_values, zeroshot=dict(crossfit_values["zeroshot"], cache=str(tmp_path / "r.h5"))
    )
    cfg3 = tmp_path / "r.yaml"
    cfg3.write_text(yaml.safe_dump(third))

    real_supervised = crossfit_module.fit_supervised
    fits = _kill_round_two(monkeypatch)
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg3)])
    assert result.exit_code == 130
    from bdsel.predict import holdout_weights_path

    weights = holdout_weights_path(tmp_path / "r.h5")
    assert torch.load(weights)["rounds_done"] == 1 and not (tmp_path / "r.h5").exists()
    fits.clear()
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg3)])
    assert result.exit_code == 0, result.output
    assert fits == [f"crossfit model {k}/3, round 2/2" for k in (1, 2, 3)]
    with h5py.File(tmp_path / "r.h5") as f:
        for s in ("train", "test"):
            assert (f[f"{s}/logprobs"][...] == full[s]).all(), s
    monkeypatch.setattr(crossfit_module, "fit_supervised", real_supervised)

    # rho_loss takes its irreducible loss from the cross-fitted models: a hold-out-free variant.
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(cfg_path),
            "--run-dir",
            str(run_dir),
            "--set",
            "select.method=rho_loss",
        ],
    )
    assert result.exit_code == 0, result.output


def test_a_forward_refit_resumes_after_a_kill_between_rounds(
    crossfit_values: dict, tmp_path: Path, monkeypatch
):
    cfg = load_config(values=crossfit_values)
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(data.dataset, torch.device("cpu"))
    predictor = CrossfitPredictor(cfg, data, source)
    predictor.fit_or_load(tmp_path / "whole.pt")
    whole = predictor.crossfit
    assert whole.rounds_done == 2 and whole.transition is not None
    torch.testing.assert_close(whole.transition.sum(1), torch.ones(len(whole.transition)).double())
    assert torch.equal(torch.load(tmp_path / "whole.pt")["transition"], whole.transition)
    assert predictor.spec()["refit_noise"] == pytest.approx(
        1 - float(whole.transition.diagonal().mean())
    )

    fits = _kill_round_two(monkeypatch)
    with pytest.raises(_Kill):
        CrossfitPredictor(cfg, data, source).fit_or_load(tmp_path / "killed.pt")
    assert torch.load(tmp_path / "killed.pt")["rounds_done"] == 1
    fits.clear()
    resumed_predictor = CrossfitPredictor(cfg, data, source)
    resumed_predictor.fit_or_load(tmp_path / "killed.pt")  # round 1 reloaded, its channel again
    resumed = resumed_predictor.crossfit
    assert fits == [f"crossfit model {k}/3, round 2/2" for k in (1, 2, 3)]
    assert torch.equal(resumed.transition, whole.transition)
    rows = torch.cat([data.train_idx[:30], torch.arange(5)])
    for split in ("train", "test"):
        assert torch.equal(resumed.logprobs(split, rows), whole.logprobs(split, rows)), split


def check_label_noise_fit(cfg_path: Path, path: Path, logprobs: dict, temperature: float) -> None:
    """The crossfit predictor calibrates on observed labels (20% noise here): its cache holds
    the fit under label noise too, and ``auto`` reads it (or the plain fit, with
    ``temperature=plain``); a cache without that fit is refused by name, not read at the
    plain fit."""
    from bdsel.assemble import build_lookups
    from bdsel.cache.format import CacheError
    from bdsel.calibration import fit_label_noise

    cfg = load_config(str(cfg_path))
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    rows = data.train_idx
    fit = fit_label_noise(torch.from_numpy(logprobs["train"])[rows], data.observed[rows])
    expected = (fit.temperature, fit.noise_rate)
    with h5py.File(path) as f:
        stored = (float(f.attrs["temperature_denoised"]), float(f.attrs["label_noise_rate"]))
        assert stored == pytest.approx(expected, rel=1e-9)
        assert f.attrs["noise_model"] == fit.model
        assert json.loads(f.attrs["noise_fit"])["transition"] == fit.transition
        assert float(f.attrs["temperature"]) == temperature
    raw = torch.from_numpy(logprobs["train"]).float()
    observed = data.observed.long()[:, None]  # a run's table: its observed labels' column

    def read(with_noise: bool):
        flag = f"zeroshot.temperature={'auto' if with_noise else 'plain'}"
        cfg = load_config(str(cfg_path), ["select.method=bayesian", flag])
        return build_lookups(("zs_logprobs",), cfg, data, torch.device("cpu"))["zs_logprobs"]

    for with_noise, t in ((True, expected[0]), (False, temperature)):
        expect = torch.log_softmax(raw / t, 1).gather(1, observed).squeeze(1)
        torch.testing.assert_close(read(with_noise).logprob, expect, atol=1e-5, rtol=0)
    with h5py.File(path, "r+") as f:
        for key in ("temperature_denoised", "label_noise_rate", "noise_model", "noise_fit"):
            del f.attrs[key]
    with pytest.raises(CacheError, match="no temperature fitted with the labels' noise"):
        read(True)
    expect = torch.log_softmax(raw / temperature, 1).gather(1, observed).squeeze(1)
    torch.testing.assert_close(read(False).logprob, expect, atol=1e-5, rtol=0)


def test_crossfit_models_on_your_own_data_is_the_recipe_cache_zeroshot_runs(
    crossfit_values: dict, tmp_path: Path
):
    # The public call on a map-style dataset of the training subset's images and observed
    # labels, with the config's recipe and seed, gives the rows cache-zeroshot writes.
    import bdsel
    from bdsel.models import create_model

    values = dict(crossfit_values, data=dict(crossfit_values["data"], augment=False))
    cfg_path = tmp_path / "cf.yaml"
    cfg_path.write_text(yaml.safe_dump(values))
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    cfg = load_config(str(cfg_path))
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    with h5py.File(tmp_path / "cf.h5") as f:
        cached = torch.from_numpy(f["train/logprobs"][...])[data.train_idx]
        test_cached = torch.from_numpy(f["test/logprobs"][...])
    source = make_image_source(data.dataset, torch.device("cpu"), augment=False)
    rows = data.train_idx
    train = torch.utils.data.TensorDataset(source.rows("train", rows), data.observed[rows])
    ds = data.dataset
    fit = bdsel.crossfit_models(
        lambda: create_model("small_cnn", n_classes=ds.n_classes, in_channels=ds.in_channels),
        train, data.observed[rows], ds.n_classes, seed=cfg.seed, progress=False,
        folds=3, epochs=2, patience=1, batch_size=64, channel_epochs=1,
    )  # fmt: skip
    assert fit.logprobs.shape == cached.shape and len(fit.models) == 3
    torch.testing.assert_close(fit.logprobs, cached, atol=1e-5, rtol=0)
    test_images = source.rows("test", torch.arange(len(ds.test.labels)))
    torch.testing.assert_close(fit.predict(test_images), test_cached, atol=1e-5, rtol=0)
    assert fit.transition is not None and fit.channel in ("anchor", "symmetric")


def test_crossfit_models_names_a_bad_argument():
    import bdsel

    images = torch.zeros(8, 1, 4, 4)
    model = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))  # noqa: E731
    for labels, fragment in (
        (torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]), "labels: values must be class indices in 0..2"),
        (torch.zeros(5, dtype=torch.long), r"labels: expected 8 labels \[N\], got \(5,\)"),
        (torch.full((8,), 0.5), "labels: values must be class indices, got fractional"),
    ):
        with pytest.raises(ValueError, match=fragment):
            bdsel.crossfit_models(model, images, labels, 3, progress=False)
    ok = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="unknown crossfit setting 'epoch'"):
        bdsel.crossfit_models(model, images, ok, 3, epoch=2)
    with pytest.raises(ValueError, match="folds: expected an int >= 2"):
        bdsel.crossfit_models(model, images, ok, 3, folds=1)
    with pytest.raises(ValueError, match="model: make_model makes the models here"):
        bdsel.crossfit_models(model, images, ok, 3, model="small_cnn")
