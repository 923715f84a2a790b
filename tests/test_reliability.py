"""Faults and bad inputs (issue 16): a resume that never rewrites history wrongly, a full disk
that says so, a loss that turns NaN, and one line with exit 2 instead of a traceback."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from bdsel_cli.main import app, epoch_line
from typer.testing import CliRunner

import bdsel.predict as run_module
from bdsel.config import load_config
from bdsel.predict import (
    default_cache_path,
    omitted_settings,
    predictor_settings,
    spec_mismatch,
)
from bdsel.rundir import writer as runlog
from bdsel.rundir.writer import check_metrics_for_resume, evaluated_epochs
from bdsel.train import TrainingDiverged, train

runner = CliRunner()
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _out(result) -> str:
    return " ".join(result.output.split())


def _error_lines(result) -> list[str]:
    """The lines from ``error:`` on (the message must take one, two at most)."""
    text = result.output
    assert "error:" in text, text
    return text[text.index("error:") :].strip().splitlines()


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "Traceback" not in result.output
    assert len(_error_lines(result)) <= 2, result.output
    for fragment in fragments:
        assert fragment in _out(result), (fragment, result.output)


def _write(tmp_path: Path, values: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` (tb/ included) and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _Stop(KeyboardInterrupt):
    pass


def _stop_at(epoch: int):
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:  # after this epoch's record, before its checkpoint
            raise _Stop

    return on_epoch


# ----------------------------------------------------------------------------- 1. resume


def test_check_metrics_for_resume_names_what_is_damaged_and_lost(tmp_path: Path):
    assert evaluated_epochs(4, 5, 2) == [2, 4]
    assert evaluated_epochs(5, 5, 2) == [2, 4, 5]
    assert evaluated_epochs(5, 5, 3) == [3, 5]
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"epoch": 2, "test_acc": 0.5}\n{"epoch": 4, "te\n{"epoch": 3}\n{"epoch": 6, "x": 1}\n'
    )
    check = check_metrics_for_resume(path, checkpoint_epoch=4, total_epochs=6, every=2)
    assert [r["epoch"] for r in check.records] == [2]
    assert check.lost == [4] and check.damaged_lines == [2] and check.unexpected == [3]
    check.rebuild({"epoch": 4, "test_acc": 0.6})
    assert [r["epoch"] for r in check.records] == [2, 4] and check.lost == []
    message = check.report(path)
    assert "line(s) 2" in message and "rebuilt epoch(s) 4" in message
    assert "epoch(s) 3" in message

    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "cut')  # cut after checkpoint 2
    check = check_metrics_for_resume(path, checkpoint_epoch=2, total_epochs=4, every=1)
    assert check.lost == [] and [r["epoch"] for r in check.records] == [1, 2]

    path.write_text('{"epo\n{"epoch": 2}\n')  # a damaged line that no checkpoint can rebuild
    check = check_metrics_for_resume(path, checkpoint_epoch=2, total_epochs=4, every=1)
    assert check.lost == [1] and "epoch(s) 1 are lost for good" in check.report(path)


def test_resume_rebuilds_a_cut_record_from_the_checkpoint(tmp_path: Path, tiny_config_values: dict):
    cfg = load_config(values=dict(tiny_config_values, train={"epochs": 3}))
    train(cfg, tmp_path / "full")
    cut = tmp_path / "cut"
    with pytest.raises(_Stop):
        train(cfg, cut, on_epoch=_stop_at(3))
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["epoch"] == 2
    text = (cut / "metrics.jsonl").read_text()
    line2 = text.splitlines()[1]
    # a crash while appending epoch 2's record: the line cut in the middle, nothing after it
    (cut / "metrics.jsonl").write_text(text[: text.index(line2) + len(line2) // 2])

    result = runner.invoke(app, ["train", "--run-dir", str(cut), "--resume"])
    assert result.exit_code == 0, result.output
    assert "rebuilt epoch(s) 2 from the checkpoint" in _out(result)
    records, full = _records(cut), _records(tmp_path / "full")
    assert [r["epoch"] for r in records] == [1, 2, 3]  # the old code lost epoch 2 for good
    assert records[1]["rebuilt"] and records[1]["train_loss"] is None
    for key in ("test_acc", "test_loss", "step", "samples_seen"):
        assert records[1][key] == full[1][key], key
    assert records[2]["test_acc"] == full[2]["test_acc"]
    assert all(len(line) <= 80 for line in result.output.splitlines() if line.startswith("epoch"))


def test_resume_never_rewrites_a_finished_run(tmp_path: Path, tiny_config_values: dict):
    run_dir = tmp_path / "run"
    cfg_path = _write(tmp_path, tiny_config_values)
    assert (
        runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)]).exit_code == 0
    )
    metrics = run_dir / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-30])  # cut mid-line
    before = _files(run_dir)

    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert "finished all 2 epochs" in _out(result) and "nothing to resume" in _out(result)
    assert "line(s) 2 of" in _out(result) and "summary.json holds the final numbers" in _out(result)
    assert _files(run_dir) == before
    # the library says the same and leaves the directory alone
    summary = train(load_config(values=tiny_config_values), run_dir, mode="resume")
    assert summary["epochs_run"] == 2
    assert _files(run_dir) == before


# ----------------------------------------------------------------------------- 2. full disk


def _full_disk_on(monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """The ``after``+1-th atomic write of run file ``name`` hits a full disk at fsync."""
    real = runlog.atomic_write_bytes
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        if Path(path).name == name:
            calls["n"] += 1
            if calls["n"] > after:
                with monkeypatch.context() as m:
                    m.setattr(os, "fsync", _raise_enospc)
                    return real(path, data)
        return real(path, data)

    monkeypatch.setattr(runlog, "atomic_write_bytes", write)


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_at_a_checkpoint_is_one_line_and_resumable(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    cfg_path = _write(tmp_path, dict(tiny_config_values, train={"epochs": 3}))
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_disk_on(m, "checkpoint.pt", after=1)  # epoch 2's checkpoint
        result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert_one_line_error(
        result,
        f"no space left on the device writing {run_dir / 'checkpoint.pt'}",
        "the last checkpoint",
        "is intact",
        f"bdsel train --run-dir {run_dir} --resume",
    )
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2, 3]


def test_full_disk_at_metrics_and_summary(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    cfg_path = _write(tmp_path, tiny_config_values)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_disk_on(m, "summary.json")
        result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert_one_line_error(result, f"writing {run_dir / 'summary.json'}", "--resume")
    assert not (run_dir / "summary.json").exists()
    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0 and (run_dir / "summary.json").is_file(), result.output

    rundir = runlog.RunDir(run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _raise_enospc)
        with pytest.raises(runlog.DiskFullError, match="metrics.jsonl: the last checkpoint"):
            rundir.append_metrics({"epoch": 3, "test_acc": 0.5})
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # no partial line left


def test_full_disk_during_cache_zeroshot_keeps_the_partial_cache(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    values = dict(tiny_config_values)
    out = tmp_path / "zs.h5"
    values["zeroshot"] = {"predictor": "holdout", "batch_size": 100, "holdout": {"epochs": 1}}
    cfg_path = _write(tmp_path, values)
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
    monkeypatch.setattr("bdsel.zeroshot.cache_writer.shutil.disk_usage", lambda path: small)
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "other.h5")])
    assert_one_line_error(result, "not enough space for", "MiB are free there")
    assert not list(tmp_path.glob("other.h5*.partial"))


# ----------------------------------------------------------------------------- 3. Ctrl-C, kill


def test_interrupt_before_the_first_checkpoint_promises_nothing(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    import bdsel.step

    cfg_path = _write(tmp_path, tiny_config_values)
    run_dir = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(bdsel.step.Stepper, "step", interrupted)
        result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert result.exit_code == 130
    assert "nothing to resume" in _out(result) and "--overwrite" in _out(result)
    assert "intact" not in _out(result)

    result = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"])
    assert_one_line_error(result, "has no checkpoint.pt yet", "start it again with --overwrite")
    result = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "nowhere"), "--resume"])
    assert_one_line_error(result, "does not exist", "without --resume")

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), __import__("signal").SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(bdsel.step.Stepper, "step", terminated)
        result = runner.invoke(
            app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir), "--overwrite"]
        )
    assert result.exit_code == 143 and "terminated" in _out(result), result.output


# ----------------------------------------------------------------------------- 4. temporaries


def test_stale_temporary_checkpoints_are_removed(tmp_path: Path, tiny_config_values: dict):
    cfg = load_config(values=dict(tiny_config_values, train={"epochs": 2}))
    run_dir = tmp_path / "run"
    with pytest.raises(_Stop):
        train(cfg, run_dir, on_epoch=_stop_at(2))
    stale = run_dir / ".checkpoint.pt.x1y2z3.tmp"  # a kill between write and rename
    stale.write_bytes(b"\0" * 1000)
    (run_dir / ".summary.json.abc.tmp").write_text("{")
    train(cfg, run_dir, mode="resume")
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2

    rundir = runlog.RunDir(run_dir)
    stale.write_bytes(b"\0")
    rundir.save_checkpoint({"epoch": 2})
    assert not stale.exists()


# ----------------------------------------------------------------------------- 5. NaN


def test_a_loss_that_turns_nan_stops_the_run_naming_epoch_and_step(
    tmp_path: Path, tiny_config_values: dict
):
    # Epoch 1 at lr 1e-3, then the step schedule multiplies it by 1e30: the loss overflows.
    values = dict(tiny_config_values)
    values["train"] = {"epochs": 3, "schedule": "step", "step_milestones": [1],
                       "step_gamma": 1e30}  # fmt: skip
    cfg_path = _write(tmp_path, values)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)])
    assert_one_line_error(result, "NaN or Inf at epoch 2, step 1", "checkpoint of epoch 1 is kept")
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert [r["epoch"] for r in _records(run_dir)] == [1]
    assert not (run_dir / "summary.json").exists()
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1\d"):
        train(load_config(values=values), tmp_path / "lib")


# ----------------------------------------------------------------------------- 8. cache spec


def test_default_cache_name_tells_predictor_settings_apart():
    base = load_config("fashion_mnist")
    path = default_cache_path(base)
    assert path.name.startswith("fashion_mnist-holdout-small_cnn-split20-h0.2-")
    other = load_config("fashion_mnist", ["zeroshot.holdout.epochs=2"])
    assert default_cache_path(other) != path
    # What `make demo` and experiments/fashion_sweep.py change keeps the one cache.
    for overrides in (
        ["select.method=bayesian"],
        ["seed=2", "data.noise.rate=0.4", "select.method=rho_loss"],
        ["zeroshot.temperature=2.0", "data.validation_fraction=0.1", "eval.split=validation"],
    ):
        assert default_cache_path(load_config("fashion_mnist", overrides)) == path, overrides


def test_train_refuses_a_cache_made_with_other_predictor_settings(
    tmp_path: Path, tiny_config_values: dict
):
    values = dict(tiny_config_values, train={"epochs": 1})
    values["select"] = dict(values["select"], method="bayesian", n_samples=16)
    values["zeroshot"] = {"predictor": "holdout", "cache": str(tmp_path / "zs.h5"),
                          "holdout": {"epochs": 1, "batch_size": 64}}  # fmt: skip
    cfg_path = _write(tmp_path, values)
    assert runner.invoke(app, ["cache-zeroshot", "-c", str(cfg_path)]).exit_code == 0

    args = ["train", "-c", str(cfg_path), "--run-dir", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--set", "zeroshot.holdout.epochs=5"])
    assert_one_line_error(
        result,
        "other predictor settings",
        "epochs (cache: 1, config: 5)",
        "--accept-cache-mismatch",
    )
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, [*args, "--set", "zeroshot.predictor=clip"])
    assert_one_line_error(result, "kind (cache: 'holdout', config: 'clip')")

    result = runner.invoke(
        app, [*args, "--set", "zeroshot.holdout.epochs=5", "--accept-cache-mismatch"]
    )
    assert result.exit_code == 0, result.output
    assert "epochs (cache: 1, config: 5)" in _out(result)  # still said, as a warning
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["zeroshot"]["accept_mismatch"] is True


def test_a_setting_the_config_leaves_out_is_checked_too():
    # Settings left out of a spec at their default stay out of the default file's name, but a
    # cache named by zeroshot.cache that was made with one of them set is still refused.
    made = load_config(
        "fashion_mnist", ["zeroshot.predictor=crossfit", "zeroshot.crossfit.refit_init=continue"]
    )
    plain = load_config("fashion_mnist", ["zeroshot.predictor=crossfit"])
    stored = predictor_settings(made)
    assert "refit_init" in stored and "refit_init" not in predictor_settings(plain)
    assert "refit_init" in omitted_settings(plain) and "refit_init" not in omitted_settings(made)
    diff = spec_mismatch(stored, predictor_settings(plain), omitted_settings(plain))
    assert diff == ["refit_init (cache: 'continue', config: unset)"]
    assert spec_mismatch(stored, predictor_settings(made), omitted_settings(made)) == []


def test_a_predictor_whose_section_is_not_the_configs_omits_nothing(monkeypatch):
    config = load_config("fashion_mnist", ["zeroshot.predictor=crossfit"])
    entry = run_module.predictor_entry("crossfit")
    assert "refit_init" in omitted_settings(config)
    elsewhere = dataclasses.replace(entry, section="zeroshot.not_a_section")
    monkeypatch.setattr(run_module, "predictor_entry", lambda name: elsewhere)
    assert omitted_settings(config) == []


# ----------------------------------------------------------------------------- 9. CLI output


def test_train_prints_only_the_changed_keys(tmp_path: Path, tiny_config_values: dict):
    cfg_path = _write(tmp_path, dict(tiny_config_values, train={"epochs": 1}))
    result = runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    text = _out(result)
    assert "select.n_candidates=64" in text and "seed=3" in text
    assert "report.targets=[0.3, 0.99]" in text
    assert "prior_precision" not in text and "candidate_bn" not in text  # defaults stay quiet
    assert len(result.output.splitlines()) < 20


def test_an_epoch_line_fits_80_columns():
    worst = {"epoch": 100, "test_acc": 1.0, "test_loss": 12.345, "train_loss": 12.345,
             "selected_noisy_frac": 1.0, "wall_s": 99999.0}  # fmt: skip
    assert len(epoch_line(worst, 100)) <= 80, epoch_line(worst, 100)
    line = epoch_line({"epoch": 3, "val_acc": 0.5, "val_loss": 1.0, "train_loss": None,
                       "selected_noisy_frac": None, "wall_s": 2.0}, 30)  # fmt: skip
    assert line.startswith("epoch  3  val acc 50.00% loss 1.000") and "train loss -" in line


# ----------------------------------------------------------------------------- the catalogue


def test_every_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch, read_only
):
    from test_report import write_run

    from bdsel.zeroshot import holdout

    cfg_path = _write(tmp_path, tiny_config_values)
    bayes = dict(tiny_config_values)
    bayes["select"] = dict(bayes["select"], method="bayesian")
    bayes_path = _write(tmp_path, bayes, "bayes.yaml")
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
        ([*train, "--set", "train.device=tpu"], "train.device"),
        ([*train, "--set", "train.device=cuda"], "CUDA is not available"),
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
        ([*cache, "--set", "zeroshot.device=tpu"], "zeroshot.device"),
    ]
    for args, fragment in catalogue:
        result = runner.invoke(app, args)
        assert_one_line_error(result, fragment)
    assert not (tmp_path / "r").exists()
    clip = runner.invoke(app, catalogue[-2][0])
    assert "zeroshot.pretrained" in _out(clip) and "/path/to/RN50-openai.pt" in _out(clip)


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
    cfg_path = _write(tmp_path, tiny_config_values)
    result = runner.invoke(
        app, ["train", "-c", str(cfg_path), "--set", "eval.extra=[online/running"]
    )
    assert_one_line_error(result, "eval.extra", "[online/running")

    long_dir = tmp_path / ("a-run-directory-with-a-name-long-enough-to-pass-80-columns-" * 2)
    values = dict(tiny_config_values, train={"epochs": 1})
    result = runner.invoke(
        app, ["train", "-c", str(_write(tmp_path, values)), "--run-dir", str(long_dir)]
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


def test_a_truncated_cache_says_that_overwrite_rebuilds_it(
    tmp_path: Path, tiny_config_values: dict
):
    values = dict(tiny_config_values, zeroshot={"predictor": "probe"})
    cfg_path, out = _write(tmp_path, values), tmp_path / "zs.h5"
    args = ["cache-zeroshot", "-c", str(cfg_path), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) // 2])
    assert_one_line_error(runner.invoke(app, args), str(out), "--overwrite")
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output


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
