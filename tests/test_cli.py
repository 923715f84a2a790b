"""The command line's own text: the changed keys a run prints, an epoch line in 80 columns,
every bad input as one line with exit 2, user text kept as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bdsel_cli.main import app, epoch_line
from conftest import assert_one_line_error, one_line, write_yaml
from typer.testing import CliRunner

runner = CliRunner()


def test_train_prints_only_the_changed_keys(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # the default run directory lands here
    cfg_path = write_yaml(tmp_path, dict(tiny_config_values, train={"epochs": 1}))
    result = runner.invoke(app, ["train", "-c", str(cfg_path)])
    assert result.exit_code == 0, result.output
    # runs/<config>-<method>-s<seed>, the config named by its file's stem
    assert (tmp_path / "runs" / "tiny-uniform-s3" / "summary.json").is_file()
    text = one_line(result)
    assert "select.n_candidates=64" in text and "seed=3" in text
    assert "report.targets=[0.3, 0.99]" in text
    assert "prior_precision" not in text and "candidate_precision" not in text  # defaults: quiet
    assert len(result.output.splitlines()) < 20


def test_an_epoch_line_fits_80_columns():
    worst = {"epoch": 100, "test_acc": 1.0, "test_loss": 12.345, "train_loss": 12.345,
             "selected_noisy_frac": 1.0, "wall_s": 99999.0}  # fmt: skip
    assert len(epoch_line(worst, 100)) <= 80, epoch_line(worst, 100)
    line = epoch_line({"epoch": 3, "val_acc": 0.5, "val_loss": 1.0, "train_loss": None,
                       "selected_noisy_frac": None, "wall_s": 2.0}, 30)  # fmt: skip
    assert line.startswith("epoch  3  val acc 50.00% loss 1.000") and "train loss -" in line


def test_every_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch, read_only
):
    from test_report import write_run

    from bdsel.predictors import holdout

    cfg_path = write_yaml(tmp_path, tiny_config_values)
    bayes = dict(tiny_config_values)
    bayes["select"] = dict(bayes["select"], method="bayesian")
    bayes_path = write_yaml(tmp_path, bayes, "bayes.yaml")
    runs = tmp_path / "runs"
    write_run(runs / "a", [0.5, 0.7])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    locked = read_only(tmp_path / "locked")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_training(self, progress=None):
        raise AssertionError("the hold-out model trained before the output was checked")

    monkeypatch.setattr(holdout.HoldoutPredictor, "fit", no_training)

    def offline(*args, **kwargs):
        raise FileNotFoundError("Failed to download file (open_clip_pytorch_model.bin)")

    monkeypatch.setattr("open_clip.pretrained.download_pretrained", offline)

    train = ["train", "-c", str(cfg_path), "--run-dir", str(tmp_path / "r")]
    cache = ["cache-zeroshot", "-c", str(cfg_path)]
    catalogue = [
        ([*train, "--set", "device=tpu"], "device: expected auto"),
        ([*train, "--set", "device=cuda"], "CUDA is not available"),
        ([*train, "--set", "train.lr=.inf"], "train.lr: expected a finite number"),
        ([*train, "--set", "train.weight_decay=.inf"], "train.weight_decay"),
        ([*train, "--set", "train.step_gamma=-5"], "train.step_gamma"),
        ([*train, "--set", "seed=-1", "--set", "data.split_seed=null"], "seed: expected"),
        (
            [
                "train",
                "-c",
                str(bayes_path),
                "--run-dir",
                str(tmp_path / "b"),
                "--set",
                f"zeroshot.cache={a_folder}",
            ],
            "is a directory, not a cache file",
        ),  # fmt: skip
        (["train", "--run-dir", str(tmp_path / "none"), "--resume"], "does not exist"),
        (["report", str(runs), "--out", str(a_file)], "is a file"),
        (["report", str(runs), "--out", str(locked)], "cannot write the report"),
        (["report", str(runs), "--out", str(locked / "sub")], "cannot write the report"),
        ([*cache, "--out", str(locked / "zs.h5")], "cannot write the cache"),
        ([*cache, "--out", str(a_folder)], "is a directory, not a cache file"),
        ([*cache, "--set", f"zeroshot.cache={a_folder}"], "is a directory"),
        (
            [*cache, "--set", "zeroshot.predictor=clip", "--out", str(tmp_path / "c.h5")],
            "weights are not available offline",
        ),  # fmt: skip
        ([*cache, "--set", "device=tpu"], "device: expected auto"),
    ]
    for args, fragment in catalogue:
        result = runner.invoke(app, args)
        assert_one_line_error(result, fragment)
    assert not (tmp_path / "r").exists()
    clip = runner.invoke(app, catalogue[-2][0])
    assert "zeroshot.pretrained" in one_line(clip) and "/path/to/RN50-openai.pt" in one_line(clip)


def test_user_text_keeps_its_brackets_and_a_log_line_is_never_wrapped(
    tmp_path: Path, tiny_config_values: dict
):
    """Paths and values in messages are printed as typed (rich markup would eat "[run1]" and
    "[bold]"); in a log (not a terminal, 80 columns) the done line and the report's warnings
    stay one line each."""
    from test_report import write_run

    missing = tmp_path / "[run1]" / "[bold]x"
    result = runner.invoke(app, ["train", "--run-dir", str(missing), "--resume"])
    assert_one_line_error(result, f"--resume: {missing} does not exist")
    cfg_path = write_yaml(tmp_path, tiny_config_values)
    result = runner.invoke(app, ["train", "-c", str(cfg_path), "--set", "report.targets=[0.5"])
    assert_one_line_error(result, "report.targets", "[0.5")

    long_dir = tmp_path / ("a-run-directory-with-a-name-long-enough-to-pass-80-columns-" * 2)
    values = dict(tiny_config_values, train={"epochs": 1})
    result = runner.invoke(
        app, ["train", "-c", str(write_yaml(tmp_path, values)), "--run-dir", str(long_dir)]
    )
    assert result.exit_code == 0, result.output
    done = [line for line in result.output.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and done[0].endswith(f"run in {long_dir}"), result.output

    unfinished = write_run(long_dir.parent / "[x]-unfinished", [0.5, 0.6], complete=False)
    result = runner.invoke(app, ["report", str(long_dir), str(unfinished), "--out",
                                 str(tmp_path / "report")])  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert any(str(unfinished) in line and "unfinished" in line for line in warning), result.output


def test_configs_keys_prints_every_key_or_those_asked_for():
    from bdsel.config.reference import every_key
    from bdsel.configure import owned_settings

    everything = runner.invoke(app, ["configs", "keys"])
    assert everything.exit_code == 0
    rows = everything.output.splitlines()[2:]
    assert [r.split("|")[1].strip(" `") for r in rows] == [
        k.key for k in every_key(owned_settings())
    ]
    svp = runner.invoke(app, ["configs", "keys", "method=svp"]).output.splitlines()[2:]
    assert len(svp) == 6 and all("`select.method=svp`" in r.split("|")[2] for r in svp)
