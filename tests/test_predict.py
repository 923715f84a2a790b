"""bdsel.predict: cache-zeroshot and the caches a run reads: default names by predictor
settings, a cache made with other settings or other data refused by name, a full disk or a
truncated file that says what to do, one writer per cache."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import h5py
import pytest
import yaml
from bdsel_cli.main import app
from conftest import assert_one_line_error, config_file, write_yaml
from typer.testing import CliRunner

from bdsel.cache.provenance import split_differences
from bdsel.configure import load_config
from bdsel.locking import ExclusiveLock
from bdsel.predict import (
    cache_lock_path,
    default_cache_path,
    omitted_settings,
    predictor_settings,
    spec_mismatch,
)

runner = CliRunner()


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_cache_zeroshot_keeps_the_partial_cache(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    values = dict(tiny_config_values)
    out = tmp_path / "zs.h5"
    values["zeroshot"] = {"predictor": "holdout", "epochs": 1}
    cfg_path = write_yaml(tmp_path, values)
    real, calls = h5py.Dataset.__setitem__, {"n": 0}

    def full_after_three(self, key, value):
        if self.name.endswith("/logprobs"):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    args = ["cache-zeroshot", "-c", str(cfg_path), "--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(h5py.Dataset, "__setitem__", full_after_three)
        result = runner.invoke(app, args)
    assert_one_line_error(
        result, f"no space left on the device writing {out}.partial", "again to resume"
    )
    with h5py.File(f"{out}.partial") as f:  # closed cleanly, and readable
        assert 0 < int(f["train/done"][...].sum()) < 1200
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["train/done"][...].all() and f["test/done"][...].all()

    # Too little room for a new cache: said before HDF5 writes anything, no file left behind.
    import shutil

    small = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr("bdsel.cache.writer.shutil.disk_usage", lambda path: small)
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "other.h5")])
    assert_one_line_error(result, "not enough space for", "MiB are free there")
    assert not list(tmp_path.glob("other.h5*.partial"))


def test_default_cache_name_tells_predictor_settings_apart():
    holdout = ["zeroshot.predictor=holdout"]
    base = load_config("fashion_mnist", holdout)
    path = default_cache_path(base)
    assert path.name.startswith("fashion_mnist-holdout-small_cnn-split20-h0.2-")
    other = load_config("fashion_mnist", [*holdout, "zeroshot.epochs=2"])
    assert default_cache_path(other) != path
    # What experiments/fashion_sweep.py changes keeps the one cache of clean labels.
    for overrides in (
        ["select.method=bayesian"],
        ["seed=2", "data.noise.rate=0.4", "select.method=rho_loss"],
        ["zeroshot.temperature=2.0", "data.validation_fraction=0.1"],
    ):
        assert default_cache_path(load_config("fashion_mnist", [*holdout, *overrides])) == path
    # The default, probe, fits the noisy labels: another noise is another cache.
    probe = default_cache_path(load_config("fashion_mnist"))
    assert probe.name.startswith("fashion_mnist-probe") and probe != path
    noisier = load_config("fashion_mnist", ["data.noise.rate=0.4"])
    assert default_cache_path(noisier) != probe
    assert default_cache_path(load_config("fashion_mnist", ["select.method=bayesian"])) == probe


def test_train_refuses_a_cache_made_with_other_predictor_settings(
    tmp_path: Path, tiny_config_values: dict
):
    values = dict(tiny_config_values, train={"epochs": 1})
    values["select"] = dict(values["select"], method="bayesian", n_samples=16)
    values["zeroshot"] = {"predictor": "holdout", "cache": str(tmp_path / "zs.h5"),
                          "holdout": {"epochs": 1, "batch_size": 64}}  # fmt: skip
    cfg_path = write_yaml(tmp_path, values)  # the hold-out model's, for when it predicts
    assert runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)]).exit_code == 0

    args = ["train", "-c", str(cfg_path), "--run-dir", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--set", "zeroshot.epochs=5"])
    assert_one_line_error(
        result,
        "other predictor settings",
        "epochs (cache: 1, config: 5)",
        "Set them to the cache's values",
    )
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, [*args, "--set", "zeroshot.predictor=clip"])
    assert_one_line_error(result, "kind (cache: 'holdout', config: 'clip')")
    # the way through: the config as the cache was made, so config.yaml names its predictor
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["zeroshot"]["epochs"] == 1


def test_a_setting_the_config_leaves_out_is_checked_too():
    # Settings left out of a spec at their default stay out of the default file's name, but a
    # cache named by zeroshot.cache that was made with one of them set is still refused.
    made = load_config("fashion_mnist", ["zeroshot.predictor=crossfit"])
    plain = load_config(
        "fashion_mnist", ["zeroshot.predictor=crossfit", "zeroshot.rounds=1"]
    )  # one round: no channel round, its settings do nothing
    stored = predictor_settings(made)
    assert "channel_epochs" in stored and "channel_epochs" not in predictor_settings(plain)
    assert "channel_epochs" in omitted_settings(plain)
    assert "channel_epochs" not in omitted_settings(made)
    diff = spec_mismatch(stored, predictor_settings(plain), omitted_settings(plain))
    assert diff == [
        "channel_folds (cache: 1, config: unset)",
        "channel_epochs (cache: 8, config: unset)",
        "rounds (cache: 2, config: 1)",
    ]
    assert spec_mismatch(stored, predictor_settings(made), omitted_settings(made)) == []


def test_a_predictor_without_settings_of_its_own_omits_nothing():
    config = load_config("fashion_mnist", ["zeroshot.predictor=crossfit", "zeroshot.rounds=1"])
    assert "channel_epochs" in omitted_settings(config)
    config.zeroshot = dataclasses.replace(config.zeroshot, settings=None)
    assert omitted_settings(config) == []


def test_a_truncated_cache_says_that_overwrite_rebuilds_it(
    tmp_path: Path, tiny_config_values: dict
):
    values = dict(tiny_config_values, zeroshot={"predictor": "probe"})
    cfg_path, out = write_yaml(tmp_path, values), tmp_path / "zs.h5"
    args = ["cache-zeroshot", "-c", str(cfg_path), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) // 2])
    assert_one_line_error(runner.invoke(app, args), str(out), "--overwrite")
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output


def test_a_cache_being_written_is_locked(tmp_path: Path, tiny_config_values: dict):
    config = config_file(tmp_path, tiny_config_values, epochs=1)
    out = tmp_path / "zs.h5"
    with ExclusiveLock(cache_lock_path(out), "the zero-shot cache"):
        result = runner.invoke(app, ["cache-zeroshot", "-c", str(config), "--out", str(out)])
        assert_one_line_error(result, "is in use by another process", f"pid {os.getpid()}")
    assert not out.exists() and not list(tmp_path.glob("zs.h5.partial*"))


def test_a_cache_for_other_data_names_the_differing_key_and_both_values(
    tiny_config_values: dict,
):
    cfg = load_config(values=tiny_config_values, overrides=["data.noise.rate=0.4"])
    spec = {"split_seed": 3, "train_fraction": 0.5, "noise": {"kind": "symmetric", "rate": 0.2},
            "imbalance_ratio": 1.0}  # fmt: skip
    text = split_differences(spec, cfg)
    assert text == (
        "data.noise: cache {'kind': 'symmetric', 'rate': 0.2}, "
        "this run {'kind': 'symmetric', 'rate': 0.4}"
    )
    same = split_differences(dict(spec, noise={"kind": "symmetric", "rate": 0.4}), cfg)
    assert "are the same" in same and "data.noise" in same
