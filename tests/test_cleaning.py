"""Clean-then-train (issue 27): the points dropped are exactly those cleanlab flags on the
crossfit cache's out-of-fold probabilities, and the precision/recall columns are right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bdsel_cli.main import app
from cleanlab.filter import find_label_issues as cleanlab_find
from conftest import assert_one_line_error
from typer.testing import CliRunner

from bdsel.assemble import build_run
from bdsel.cache.format import load_zs_logprobs
from bdsel.configure import load_config
from bdsel.data import derive_run_data, load_dataset
from bdsel.data.label_issues import cleaning_stats, find_label_issues

runner = CliRunner()


def test_precision_recall_and_what_is_left_on_a_hand_built_example():
    flagged = torch.tensor([True, True, False, False, True, False])
    noisy = torch.tensor([True, False, True, False, True, False])
    stats = cleaning_stats(flagged, noisy)
    assert stats["n_flagged"] == 3 and stats["n_mislabeled"] == 3 and stats["n_points"] == 6
    assert stats["precision"] == pytest.approx(2 / 3) and stats["recall"] == pytest.approx(2 / 3)
    assert stats["mislabeled_left"] == pytest.approx(1 / 3)  # points 2, 3, 5: one mislabeled
    none = cleaning_stats(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    assert none["precision"] is None and none["recall"] is None and none["mislabeled_left"] == 0


@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "predicted_neq_given"])
def test_the_flags_are_cleanlabs_own(filter_by: str):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=g)
    logits = torch.randn(300, 4, generator=g)
    logits[torch.arange(300), labels] += 2.5
    wrong = torch.rand(300, generator=g) < 0.2
    labels = torch.where(wrong, (labels + 1) % 4, labels)
    probs = torch.softmax(logits.double(), 1)
    got = find_label_issues(labels, probs, filter_by)
    want = cleanlab_find(labels=labels.numpy(), pred_probs=probs.numpy(), filter_by=filter_by)
    assert np.array_equal(got.numpy(), want) and 0 < int(got.sum()) < 300


def _noisy_config_and_cache(tmp_path: Path, tiny_config_values: dict) -> tuple[Path, Path]:
    """A tiny config at 30% symmetric noise, and a crossfit cache of its data to clean by."""
    values = dict(tiny_config_values)
    values["data"] = dict(values["data"], noise={"kind": "symmetric", "rate": 0.3})
    # One round: cleaning reads any crossfit cache's out-of-fold probabilities, and on these
    # 600 tiny images the default's two rounds (a channel round, then 3-epoch models through
    # its channel) leave the noise where it was (30.1% of the kept points, against 30%).
    values["zeroshot"] = {"predictor": "crossfit", "epochs": 3, "rounds": 1}
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(values))
    cache = tmp_path / "cf.h5"
    made = runner.invoke(app, ["cache-zeroshot", "-c", str(config_path), "--out", str(cache)])
    assert made.exit_code == 0, made.output
    return config_path, cache


def test_training_drops_exactly_the_flagged_points_and_records_it(
    tmp_path: Path, tiny_config_values: dict
):
    config_path, cache = _noisy_config_and_cache(tmp_path, tiny_config_values)
    cfg = load_config(str(config_path), [f"data.clean.cache={cache}"])
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    probs = load_zs_logprobs(cache, data.dataset)[data.train_idx].double().exp()
    flagged = cleanlab_find(
        labels=data.observed[data.train_idx].numpy(), pred_probs=probs.numpy()
    )  # cleanlab's defaults
    want = set(data.train_idx[~torch.from_numpy(flagged)].tolist())
    run = build_run(cfg)
    assert set(run.data.train_idx.tolist()) == want and 0 < flagged.sum() < len(flagged)
    assert run.data.base_noisy_frac < data.base_noisy_frac  # cleaning removed mostly noise

    result = runner.invoke(
        app, ["train", "-c", str(config_path), "--set", f"data.clean.cache={cache}",
              "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stats = summary["cleaning"]
    noisy = data.noisy[data.train_idx]
    hits = int((torch.from_numpy(flagged) & noisy).sum())
    assert stats["n_flagged"] == int(flagged.sum()) and stats["n_points"] == len(flagged)
    assert stats["precision"] == pytest.approx(hits / flagged.sum())
    assert stats["recall"] == pytest.approx(hits / int(noisy.sum()))
    assert stats["filter_by"] == "prune_by_noise_rate" and stats["cache"] == str(cache)

    holdout = runner.invoke(
        app, ["train", "-c", str(config_path), "--set", f"data.clean.cache={tmp_path / 'no.h5'}",
              "--run-dir", str(tmp_path / "r2")],
    )  # fmt: skip
    assert_one_line_error(holdout, "data.clean.cache", "does not exist")
    (tmp_path / "half.h5.partial").write_bytes(cache.read_bytes())  # an interrupted cache
    for path, fragments in (
        (tmp_path, ("is a directory, not a cache file: point data.clean.cache at a file",)),
        (tmp_path / "half.h5", ("is incomplete", "run the same bdsel cache-zeroshot command")),
    ):
        result = runner.invoke(
            app, ["train", "-c", str(config_path), "--set", f"data.clean.cache={path}",
                  "--run-dir", str(tmp_path / "r3")],
        )  # fmt: skip
        assert_one_line_error(result, str(path), *fragments)
