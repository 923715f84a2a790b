"""The hold-out predictor and Bayesian selection end to end through the real CLI."""

import json
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from bdsel_cli.main import app
from conftest import one_line, write_tiny_clip, write_yaml
from typer.testing import CliRunner

from bdsel.configure import load_config
from bdsel.data import derive_run_data, load_dataset, make_image_source
from bdsel.predictors.holdout import HoldoutPredictor
from bdsel.train import train

runner = CliRunner()


@pytest.fixture
def bayes_values(tiny_config_values: dict, tmp_path: Path) -> dict:
    values = dict(tiny_config_values)
    values["select"] = dict(values["select"], method="bayesian",
                              bayesian={"n_samples": 32, "alpha": 0.3})  # fmt: skip
    values["zeroshot"] = {
        "predictor": "holdout",
        "cache": str(tmp_path / "zs.h5"),
        "temperature": 2.0,
        "epochs": 2,
        "batch_size": 64,
    }
    return values


def test_holdout_model_never_trains_on_training_subset(bayes_values: dict):
    cfg = load_config(values=bayes_values)
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(data.dataset, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    original = source.iter_batches

    def spy(split, order, batch_size, **kw):
        for idx, x in original(split, order, batch_size, **kw):
            if kw.get("generator") is not None:  # training batches are the augmented ones
                seen.append(idx.clone())
            yield idx, x

    source.iter_batches = spy
    predictor = HoldoutPredictor(cfg, data, source)
    predictor.fit()
    trained_on = set(torch.cat(seen).tolist())
    calibration = set(predictor.calibration_rows.tolist())
    # It trains on the hold-out less its calibration split, never on a training-subset index.
    assert trained_on == set(data.holdout_idx.tolist()) - calibration
    assert len(calibration) == round(0.1 * len(data.holdout_idx))
    assert not trained_on & set(data.train_idx.tolist())
    rows, labels = predictor.calibration()
    assert torch.equal(labels, data.clean[rows])
    assert 1 <= predictor.epochs_trained <= cfg.zeroshot.settings.epochs


def test_cache_then_bayesian_training_through_cli(bayes_values: dict, tmp_path: Path):
    cfg_path = tmp_path / "bayes.yaml"
    cfg_path.write_text(yaml.safe_dump(bayes_values))
    result = runner.invoke(app, ["cache-zeroshot", "--config", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in one_line(result)
    with h5py.File(tmp_path / "zs.h5") as f:
        assert f["train/logprobs"].shape == (1200, 10) and f["train/done"][...].all()
        assert json.loads(f.attrs["predictor"])["kind"] == "holdout"
        # Clean calibration labels: the plain temperature fit only, no label-noise fit.
        assert "temperature" in f.attrs and "label_noise_rate" not in f.attrs

    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    for key in ("alpha", "term_loglik", "term_zs", "term_lme", "pred_std", "zs_agree"):
        assert f"select/{key}" in last, key
    assert last["select/alpha"] == pytest.approx(0.3)
    assert last["select/pred_std"] > 0  # samples from the posterior, not the MAP
    assert last["select/term_zs"] <= 0 and last["select/term_loglik"] <= 0
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["selector"]["posterior"]["n_updates"] == 18


def test_bayesian_resume_restores_posterior(bayes_values: dict, tmp_path: Path):
    from bdsel.predict import cache_zeroshot

    cfg = load_config(values=dict(bayes_values, train={"epochs": 2}))
    cache_zeroshot(cfg, progress=False)
    full = train(cfg, tmp_path / "full")

    class Stop(KeyboardInterrupt):
        pass

    def stop(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", on_epoch=stop)
    resumed = train(cfg, tmp_path / "cut", mode="resume")
    assert resumed["final_test_acc"] == full["final_test_acc"]
    a = torch.load(tmp_path / "full/checkpoint.pt", weights_only=False)["selector"]["posterior"]
    b = torch.load(tmp_path / "cut/checkpoint.pt", weights_only=False)["selector"]["posterior"]
    assert torch.equal(a["A"], b["A"]) and torch.equal(a["G"], b["G"])


def test_bayesian_without_cache_or_with_foreign_split_fails_clearly(
    bayes_values: dict, tmp_path: Path
):
    cfg_path = tmp_path / "bayes.yaml"
    cfg_path.write_text(yaml.safe_dump(bayes_values))
    result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "needs the zero-shot cache" in one_line(result) and "bdsel cache-zeroshot" in one_line(
        result
    )
    assert not (tmp_path / "r").exists()

    assert runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(cfg_path),
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            "data.split_seed=99",
        ],
    )
    assert result.exit_code == 2
    assert "another hold-out split" in one_line(result)


def test_holdout_cache_resumes_with_the_same_model(
    bayes_values: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from bdsel.cache.format import partial_path
    from bdsel.predict import cache_zeroshot, holdout_weights_path
    from bdsel.predictors import holdout

    cfg = load_config(values=bayes_values, overrides=["eval.batch_size=128"])
    whole = cache_zeroshot(cfg, tmp_path / "whole.h5", progress=False)
    assert whole.rows_computed == 1500

    cut = tmp_path / "cut.h5"
    calls = {"n": 0}
    original = holdout.HoldoutPredictor.logprobs

    def dies_after_three(self, images, rows):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return original(self, images, rows)

    with monkeypatch.context() as m:
        m.setattr(holdout.HoldoutPredictor, "logprobs", dies_after_three)
        with pytest.raises(KeyboardInterrupt):
            cache_zeroshot(cfg, cut, progress=False)
    assert partial_path(cut).exists() and holdout_weights_path(cut).exists() and not cut.exists()

    def no_retraining(self):
        raise AssertionError("a resume must reload the saved hold-out model, not retrain it")

    with monkeypatch.context() as m:
        m.setattr(holdout.HoldoutPredictor, "fit", no_retraining)
        resumed = cache_zeroshot(cfg, cut, progress=False)
    assert 0 < resumed.rows_computed < 1500
    assert not holdout_weights_path(cut).exists()
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(cut) as b:
        for split in ("train", "test"):
            assert (a[f"{split}/logprobs"][...] == b[f"{split}/logprobs"][...]).all()


def test_clip_cache_from_local_checkpoint_through_cli(bayes_values: dict, tmp_path: Path):
    """The real cache-zeroshot command with an open_clip architecture file and a local
    random-init checkpoint (no download), then bayesian training on that cache."""
    arch, checkpoint = write_tiny_clip(tmp_path, "bdsel-cli-tiny-clip", patch_size=8)
    values = dict(bayes_values)
    values["zeroshot"] = {
        "predictor": "clip",
        "model": str(arch),
        "pretrained": str(checkpoint),
        "cache": str(tmp_path / "clip.h5"),
    }
    cfg_path = tmp_path / "clip.yaml"
    cfg_path.write_text(yaml.safe_dump(values))
    result = runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "clip.h5") as f:
        spec = json.loads(f.attrs["predictor"])
        assert spec["kind"] == "clip" and spec["pretrained"] == str(checkpoint)
        assert spec["checkpoint_sha256"] and f["test/done"][...].all()
        assert f["train/logprobs"].shape == (1200, 10)

    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir), "--set", "train.epochs=1"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(cfg_path),
            "--run-dir",
            str(tmp_path / "rho"),
            "--set",
            "select.method=rho_loss",
        ],
    )
    assert result.exit_code == 2 and "needs an irreducible-loss model" in one_line(result)


def test_uniform_epochs_skip_the_candidate_forward(bayes_values: dict, tmp_path: Path):
    """In a warm-up epoch bayesian picks as uniform: no candidate forward is run;
    once it selects, the forward sees every candidate."""
    from bdsel.assemble import build_run
    from bdsel.forward import autocast_for
    from bdsel.runtime import SectionTimer
    from bdsel.selection import Candidates
    from bdsel.step import EpochStats, Stepper

    values = dict(bayes_values, select=dict(bayes_values["select"], warmup_epochs=1))
    assert (
        runner.invoke(app, ["cache-zeroshot", "-c", str(write_yaml(tmp_path, values))]).exit_code
        == 0
    )
    run = build_run(load_config(values=values))
    sizes: list[int] = []
    run.model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    idx = run.data.train_idx[:64]
    cands = Candidates(idx, run.source.rows("train", idx), run.observed[idx])
    plain = autocast_for(run.device, "fp32")
    for epoch, expected in [(0, [16]), (1, [64, 16])]:
        run.selector.set_epoch(epoch)
        assert run.selector.wants_forward() == (epoch == 1)
        sizes.clear()
        g = torch.Generator().manual_seed(0)
        stats, timer = EpochStats.zeros(run.device), SectionTimer(run.device)
        Stepper(run, run.model, run.model, plain, plain, timer, stats).step(cands, g)
        assert sizes == expected


def test_rescore_forwards_the_candidates_whose_last_scores_were_highest(
    bayes_values: dict, tmp_path: Path
):
    """select.rescore: in the first selecting epoch every candidate is scored and its score
    kept; from the second, the candidate forward sees only the n_B · rescore candidates whose
    last scores were highest (never-scored ones first), and the kept scores resume exactly."""
    from bdsel.assemble import build_run
    from bdsel.forward import autocast_for
    from bdsel.runtime import SectionTimer
    from bdsel.selection import Candidates, shortlist
    from bdsel.step import EpochStats, Stepper

    cands = Candidates(torch.arange(10, 16), torch.randn(6, 1, 4, 4), torch.tensor([0, 1] * 3))
    last = torch.tensor([0.5, torch.inf, -3.0, 2.0, 1.0, -1.0], dtype=torch.float64)
    kept = shortlist(cands, last, 3)
    assert sorted(kept.indices.tolist()) == [11, 13, 14]  # never scored, then 2.0 and 1.0
    assert torch.equal(kept.labels, cands.labels[kept.indices - 10])
    assert torch.equal(kept.inputs, cands.inputs[kept.indices - 10])

    values = dict(bayes_values, select=dict(bayes_values["select"], rescore=0.5))
    cfg = load_config(values=values)
    assert (
        runner.invoke(app, ["cache-zeroshot", "-c", str(write_yaml(tmp_path, values))]).exit_code
        == 0
    )
    run = build_run(cfg)
    assert run.n_rescored == 32
    sizes: list[int] = []
    run.model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    scored: list[torch.Tensor] = []
    real_select = run.selector.select

    def spy(indices, labels, logits=None, features=None, **kw):
        scored.append(indices.clone())
        return real_select(indices, labels, logits, features, **kw)

    run.selector.select = spy
    plain = autocast_for(run.device, "fp32")
    first, second = run.data.train_idx[:64], run.data.train_idx[32:96]

    def step(idx: torch.Tensor) -> None:
        cands = Candidates(idx, run.source.rows("train", idx), run.observed[idx])
        stats, timer = EpochStats.zeros(run.device), SectionTimer(run.device)
        g = torch.Generator().manual_seed(0)
        Stepper(run, run.model, run.model, plain, plain, timer, stats).step(cands, g)

    run.selector.set_epoch(0)  # the first selecting epoch: no shortlist, every score kept
    step(first)
    assert sizes == [64, 16]
    kept_scores = run.selector._last.clone()
    assert torch.isfinite(kept_scores[first]).all()
    assert torch.isinf(kept_scores[run.data.train_idx[64:]]).all()

    run.selector.set_epoch(1)
    sizes.clear()
    step(second)
    assert sizes == [32, 16]
    # rows 64-95 were never scored, so they are the whole shortlist
    assert sorted(scored[-1].tolist()) == sorted(run.data.train_idx[64:96].tolist())
    before = run.selector._last.clone()
    assert torch.isfinite(before[second]).all()
    step(second)  # now all 64 have scores: the 32 highest of them
    top = second[torch.argsort(before[second], descending=True)[:32]]
    assert sorted(scored[-1].tolist()) == sorted(top.tolist())
    rescored = set(scored[-1].tolist())
    untouched = [i for i in second.tolist() if i not in rescored]
    assert torch.equal(run.selector._last[untouched], before[untouched])
    assert not torch.equal(run.selector._last[scored[-1]], before[scored[-1]])

    fresh = build_run(cfg)
    fresh.selector.load_state_dict(run.selector.state_dict())
    assert torch.equal(fresh.selector._last, run.selector._last)
    with pytest.raises(ValueError, match="last_scores: 3 rows in the state"):
        fresh.selector.load_state_dict({**run.selector.state_dict(), "last_scores": before[:3]})

    summary = train(load_config(values=dict(values, train=dict(values["train"], epochs=3))),
                    tmp_path / "run")  # fmt: skip
    assert summary["epochs_run"] == 3
    with pytest.raises(ValueError, match="select.rescore: select.method=uniform keeps no"):
        build_run(load_config(values=dict(values, select=dict(values["select"], method="uniform"))))


def test_a_run_holds_its_zero_shot_table_in_o_n(bayes_values: dict, tmp_path: Path):
    """A run reads of the cache [N, C] only each row's observed label's log-prob and likeliest
    class: three values a row on the device, not C; and the same entries the table has."""
    from bdsel.assemble import build_run
    from bdsel.cache.format import load_zs_logprobs
    from bdsel.table import LabelColumn

    cfg_path = tmp_path / "bayes.yaml"
    cfg_path.write_text(yaml.safe_dump(bayes_values))
    assert runner.invoke(app, ["cache-zeroshot", "--config", str(cfg_path)]).exit_code == 0
    run = build_run(load_config(str(cfg_path)))
    table = run.selector.table
    assert isinstance(table, LabelColumn)
    n, c = len(run.data.dataset.train), run.data.dataset.n_classes
    held = [table.logprob, table.top, table.labels]
    assert sum(t.numel() for t in held) == 3 * n < n * c
    full = torch.log_softmax(load_zs_logprobs(tmp_path / "zs.h5", None) / 2.0, dim=1)
    observed = run.observed.long()
    assert torch.equal(table.logprob, full.gather(1, observed[:, None]).squeeze(1))
    assert torch.equal(table.top, full.argmax(1))
