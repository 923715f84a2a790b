"""The ``probe`` predictor: cross-fitted linear probes on frozen features, the cache's recorded
cost, and the end-to-end clock the run and the report read from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_clip

from bdsel.cache.format import read_cache_info
from bdsel.configure import load_config
from bdsel.predict import cache_zeroshot, one_time_cost
from bdsel.predictors.probe import assign_probe_folds, crossfit_probe
from bdsel.report import make_report
from bdsel.report.render import display_table, equal_time, predictor_rows
from bdsel.report.rows import build_rows
from bdsel.report.runs import load_run


def _clusters(n: int, c: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class clusters: features float32 [n, d], clean labels int64 [n]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % c
    centres = 2.0 * torch.randn(c, d, generator=g)
    return centres[labels] + torch.randn(n, d, generator=g), labels


def _pairflip(labels: torch.Tensor, c: int, rate: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=g) < rate
    return torch.where(flip, (labels + 1) % c, labels)


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_no_row_is_predicted_by_a_probe_fitted_on_it(folds: int):
    x, y = _clusters(300, 4, 6, seed=1)
    fit = crossfit_probe(x, y, 4, folds=folds, epochs=3, channel="none", seed=2)
    assert sorted(torch.bincount(fit.fold_of).tolist()) == [300 // folds] * folds or (
        max(torch.bincount(fit.fold_of)) - min(torch.bincount(fit.fold_of)) <= 1
    )
    # each row's log-probs are its own fold's probe's
    per_probe = fit.per_probe(x)
    torch.testing.assert_close(fit.logprobs, per_probe[fit.fold_of, torch.arange(300)])
    for k in range(folds):
        # the labels of fold k's rows change nothing of what fold k's rows are given
        mine = fit.fold_of == k
        changed = y.clone()
        changed[mine] = (changed[mine] + 1) % 4
        other = crossfit_probe(x, changed, 4, folds=folds, epochs=3, channel="none", seed=2)
        assert torch.equal(other.weights[k], fit.weights[k])
        assert torch.equal(other.logprobs[mine], fit.logprobs[mine])
        assert not torch.equal(other.weights[(k + 1) % folds], fit.weights[(k + 1) % folds])


def test_the_folds_are_disjoint_and_cover_every_row():
    fold_of = assign_probe_folds(101, 3, seed=7)
    assert fold_of.shape == (101,) and set(fold_of.tolist()) == {0, 1, 2}
    counts = torch.bincount(fold_of).tolist()
    assert max(counts) - min(counts) <= 1
    assert torch.equal(fold_of, assign_probe_folds(101, 3, seed=7))
    assert not torch.equal(fold_of, assign_probe_folds(101, 3, seed=8))


def test_rows_outside_the_fit_get_the_mean_of_the_probes_probabilities():
    x, y = _clusters(200, 3, 5, seed=3)
    fit = crossfit_probe(x[:150], y[:150], 3, folds=2, epochs=2, channel="none")
    lp = fit.predict(x[150:]).double()
    mean = fit.per_probe(x[150:]).double().exp().mean(0)
    torch.testing.assert_close(lp.exp(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(50, dtype=torch.float64))


def test_the_channel_round_undoes_a_pair_flip():
    x, clean = _clusters(2000, 5, 8, seed=4)
    observed = _pairflip(clean, 5, 0.3, seed=5)
    plain = crossfit_probe(x, observed, 5, epochs=10, channel="none")
    through = crossfit_probe(x, observed, 5, epochs=10, channel="auto")
    assert through.channel == "anchor" and through.transition is not None
    # the estimated channel puts each class's flipped mass on the next class
    t = through.transition
    assert bool((t.argmax(1) == torch.arange(5)).all())
    off = t.clone().fill_diagonal_(0)
    assert bool((off.argmax(1) == (torch.arange(5) + 1) % 5).all())
    acc = lambda fit: float((fit.logprobs.argmax(1) == clean).float().mean())  # noqa: E731
    assert acc(through) > acc(plain) + 0.05  # the plain probes believe the flipped labels
    noisy = observed != clean
    lp_plain = plain.logprobs.gather(1, observed[:, None]).squeeze(1)
    lp_through = through.logprobs.gather(1, observed[:, None]).squeeze(1)
    assert lp_through[noisy].median() < lp_plain[noisy].median() - 0.5


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.zeros(10, 3), torch.full((10,), 4), "labels: expected classes in 0..3"),
        (torch.zeros(10, 3), torch.full((10,), -1), "labels: expected classes in 0..3"),
        (
            torch.zeros(10, 3),
            torch.zeros(9, dtype=torch.long),
            "labels: expected \\[N\\] with N = 10",
        ),
        (
            torch.full((10, 3), float("nan")),
            torch.zeros(10, dtype=torch.long),
            "features: holds NaN",
        ),
        (torch.zeros(10), torch.zeros(10, dtype=torch.long), "features: expected \\[N, D\\]"),
    ],
)
def test_bad_input_is_named(features, labels, match):
    with pytest.raises(ValueError, match=match):
        crossfit_probe(features, labels, 4)


def _probe_config(tiny_config_values: dict, tmp_path: Path, **probe) -> object:
    values = json.loads(json.dumps(tiny_config_values))
    values["zeroshot"] = {"predictor": "probe", "cache": str(tmp_path / "probe.h5"),
                          "epochs": 2, **probe}  # fmt: skip
    return load_config(values=values)


def test_the_cache_records_its_cost_and_the_run_reads_it(tiny_config_values, tmp_path):
    config = _probe_config(tiny_config_values, tmp_path)
    summary = cache_zeroshot(config, progress=False)
    info = read_cache_info(summary.path)
    assert info["predictor"]["kind"] == "probe"
    assert 0 < info["predictor_seconds"] == pytest.approx(summary.predictor_seconds)
    assert summary.predictor_seconds >= summary.seconds - 1e-6  # the fit and the rows
    cost = one_time_cost(config, ("zs_logprobs",))
    assert cost == {"predictor_s": info["predictor_seconds"],
                    "predictor_test_acc": pytest.approx(info["test_accuracy"])}  # fmt: skip
    assert one_time_cost(config, ()) == {"predictor_s": 0.0, "predictor_test_acc": None}


def test_a_budget_counts_the_predictor_and_the_report_reads_end_to_end(
    tiny_config_values, tmp_path, caplog
):
    from bdsel.train import train

    config = _probe_config(tiny_config_values, tmp_path)
    cache_zeroshot(config, progress=False)
    cost = read_cache_info(tmp_path / "probe.h5")["predictor_seconds"]
    values = config.to_dict()
    values["select"]["method"] = "bayesian"
    values["train"] |= {"epochs": 50, "budget_s": cost + 1e-3}  # spent after the first epoch
    bayes = load_config(values=values)
    summary = train(bayes, tmp_path / "bayes")
    assert summary["epochs_run"] == 1 and summary["stopped_by_budget"] == pytest.approx(cost + 1e-3)
    assert summary["steps"] == 1  # the first step spends the millisecond left
    assert summary["predictor_s"] == pytest.approx(cost)
    # resumed once it is over: nothing more to train, and nothing reported lost
    with caplog.at_level("WARNING"):
        assert train(bayes, tmp_path / "bayes", mode="resume")["epochs_run"] == 1
    assert "its train.budget_s spent" in caplog.text and "lost" not in caplog.text
    values["select"]["method"], values["train"]["budget_s"] = "uniform", None
    values["train"]["epochs"] = 2
    uniform = train(load_config(values=values), tmp_path / "uniform")
    assert uniform["predictor_s"] == 0.0

    runs = [load_run(tmp_path / name)[0] for name in ("bayes", "uniform")]
    assert runs[0].predictor_s == pytest.approx(cost) and runs[1].predictor_s == 0.0
    assert runs[0].e2e_s == pytest.approx(cost + runs[0].wall_s)
    rows = build_rows(runs, [0.01])
    assert equal_time(rows) == pytest.approx(min(cost + runs[0].wall_s, runs[1].wall_s))
    headers, body = display_table(rows, [0.01])
    e2e, train_only = headers.index("end to end to 1%"), headers.index("time to 1%")
    by_method = {cells[0]: cells for cells in body}
    assert set(by_method) == {"bayesian", "uniform", "predictor: probe"}
    # uniform reads no predictor: its end-to-end time is its training time
    assert by_method["uniform"][e2e] == by_method["uniform"][train_only]
    assert by_method["bayesian"][e2e] != by_method["bayesian"][train_only]
    (p,) = predictor_rows(rows)
    assert p.seconds == pytest.approx(cost) and p.n_runs == 1
    assert p.test_acc == pytest.approx(read_cache_info(tmp_path / "probe.h5")["test_accuracy"])
    report = make_report([tmp_path / "bayes", tmp_path / "uniform"], out_dir=tmp_path / "report")
    assert "predictor: probe" in (tmp_path / "report" / "table.md").read_text()
    assert "e2e_seconds_to_" in (tmp_path / "report" / "table.csv").read_text()
    assert report.rows


def test_end_to_end_columns_on_hand_built_runs(tmp_path):
    """Two runs written by hand: a predictor of 30 s, then training; and plain training."""

    def write(name: str, method: str, records: list[dict]) -> None:
        d = tmp_path / name
        d.mkdir()
        cfg = {"seed": 0, "select": {"method": method},
               "data": {"name": "fashion_mnist", "noise": {"kind": "none", "rate": 0.0}}}  # fmt: skip
        (d / "config.yaml").write_text(json.dumps(cfg))
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def rec(epoch, acc, wall, pred=None):
        r = {"epoch": epoch, "step": epoch, "samples_seen": epoch, "test_acc": acc, "wall_s": wall}
        if pred is not None:
            r |= {"predictor_s": pred, "predictor_test_acc": 0.6}
        return r

    write("sel", "bayesian", [rec(1, 0.5, 10.0, 30.0), rec(2, 0.8, 20.0, 30.0)])
    write("uni", "uniform", [rec(1, 0.6, 20.0), rec(2, 0.7, 40.0), rec(3, 0.75, 60.0)])
    runs = [load_run(tmp_path / n)[0] for n in ("sel", "uni")]
    rows = build_rows(runs, [0.7])
    # bayesian reaches 70% after 20 s of training, 50 s end to end; uniform after 40 s
    assert rows[0].cells[0].e2e == [50.0] and rows[1].cells[0].e2e == [40.0]
    assert equal_time(rows) == 50.0  # the shortest run end to end
    assert runs[0].acc_at_seconds(50.0, "e2e_s") == 0.8
    assert runs[1].acc_at_seconds(50.0, "e2e_s") == 0.7  # its last record within 50 s
    headers, body = display_table(rows, [0.7])
    assert body[0][headers.index("acc at 50.0s end to end")] == "80%"
    assert body[1][headers.index("acc at 50.0s end to end")] == "70%"
    assert body[2][0] == "predictor: bayesian" or body[2][0].startswith("predictor: ")
    assert body[2][headers.index("final acc")] == "60%"
    assert body[2][headers.index("predictor")] == "30.0s"


def test_the_probe_runs_on_clip_image_embeddings_offline(tiny_config_values, tmp_path):
    arch, checkpoint = write_tiny_clip(tmp_path, "probe-tiny-clip")
    values = json.loads(json.dumps(tiny_config_values))
    values["zeroshot"] = {"predictor": "probe_clip", "model": str(arch),
                          "pretrained": str(checkpoint), "cache": str(tmp_path / "clip-probe.h5"),
                          "epochs": 2}  # fmt: skip
    config = load_config(values=values)
    summary = cache_zeroshot(config, progress=False)
    spec = read_cache_info(summary.path)["predictor"]
    assert spec["features"] == "clip" and spec["model"] == "probe-tiny-clip"
    assert len(spec["checkpoint_sha256"]) == 64
    assert summary.predictor_seconds > 0
    # out-of-fold rows are the fold probes' own; the embeddings are the model's, normalised
    from bdsel.data import derive_run_data, load_dataset
    from bdsel.predictors.features import FeatureExtractor

    data = derive_run_data(
        load_dataset(config.data), config.data, config.seed, config.holdout_fraction
    )
    extractor = FeatureExtractor(config, data.dataset, torch.device("cpu"), "clip")
    feats = extractor("train", data.train_idx[:8])
    assert feats.shape == (8, 32)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(8))


def test_the_library_pages_probe_snippet_runs():
    import bdsel

    x, clean = _clusters(400, 4, 6, seed=9)
    images = (x - x.min()).div(x.max() - x.min()).mul(255).to(torch.uint8).reshape(400, 1, 2, 3)
    noisy_labels, n_classes = _pairflip(clean, 4, 0.2, seed=10), 4
    features = images.reshape(len(images), -1).float() / 255  # as docs/library.md writes it
    fit = bdsel.crossfit_probe(features, noisy_labels, n_classes)
    table = bdsel.ZeroShotTable.calibrated(fit.logprobs, noisy_labels)
    assert table.n_rows == 400 and table.n_classes == 4
    assert table.temperature > 0 and fit.folds == 2


def test_the_probe_runs_on_a_frozen_backbones_features(tiny_config_values, tmp_path):
    from bdsel.models import create_model

    torch.manual_seed(0)
    weights = tmp_path / "backbone.pt"
    torch.save(create_model("small_cnn", n_classes=10, in_channels=1).state_dict(), weights)
    values = json.loads(json.dumps(tiny_config_values))
    values["zeroshot"] = {"predictor": "probe_backbone", "cache": str(tmp_path / "bb.h5"),
                          "backbone": "small_cnn", "weights": str(weights),
                          "epochs": 2}  # fmt: skip
    config = load_config(values=values)
    summary = cache_zeroshot(config, progress=False)
    spec = read_cache_info(summary.path)["predictor"]
    assert spec["features"] == "backbone" and spec["backbone"] == "small_cnn"
    assert spec["weights"] == "backbone.pt" and len(spec["weights_sha256"]) == 64
    # a backbone without its weights file is named before anything runs
    values["zeroshot"]["weights"] = None
    with pytest.raises(ValueError, match="zeroshot.weights"):
        cache_zeroshot(load_config(values=values), progress=False)


def test_an_interrupted_caches_probes_are_reloaded_as_they_were(tiny_config_values, tmp_path):
    from bdsel.data import derive_run_data, load_dataset
    from bdsel.predictors.registry import create_predictor

    config = _probe_config(tiny_config_values, tmp_path)
    data = derive_run_data(
        load_dataset(config.data), config.data, config.seed, config.holdout_fraction
    )
    first = create_predictor(config, data, torch.device("cpu"))
    first.fit_or_load(tmp_path / "probes.pt")
    assert (tmp_path / "probes.pt").is_file()
    again = create_predictor(config, data, torch.device("cpu"))
    again.fit_or_load(tmp_path / "probes.pt")
    rows = torch.arange(len(data.dataset.train))
    assert torch.equal(first.logprobs("train", rows), again.logprobs("train", rows))
    assert again.spec() == first.spec()
    # reloaded, not refitted: what the file holds is what it predicts
    saved = torch.load(tmp_path / "probes.pt")
    saved["biases"] = saved["biases"] + torch.arange(saved["biases"].shape[1]).float()
    torch.save(saved, tmp_path / "probes.pt")
    third = create_predictor(config, data, torch.device("cpu"))
    third.fit_or_load(tmp_path / "probes.pt")
    outside = rows[first.position < 0]  # rows the probes' biases decide
    assert not torch.equal(third.logprobs("train", outside), first.logprobs("train", outside))
