"""End-to-end training through the library and the real CLI on tiny Fashion-MNIST files."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from bdsel_cli.main import app
from conftest import one_line
from typer.testing import CliRunner

from bdsel.configure import load_config
from bdsel.forward import batchnorm_batch_stats
from bdsel.optim import lr_factor
from bdsel.train import train

runner = CliRunner()


def _write_config(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_cli_trains_two_epochs_and_writes_run_dir(tmp_path: Path, tiny_config_values: dict):
    cfg_path = _write_config(tmp_path, tiny_config_values)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(cfg_path), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    # 600 train points, 64 candidates -> 9 steps of 16 selected per epoch
    assert [r["step"] for r in records] == [9, 18]
    assert records[-1]["samples_seen"] == 18 * 16
    assert records[-1]["base_noisy_frac"] == pytest.approx(0.2)
    assert 0.0 <= records[-1]["selected_noisy_frac"] <= 1.0
    assert records[-1]["wall_s"] > 0 and records[-1]["selection_s"] >= 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["select"]["n_selected"] == 16 and saved["seed"] == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs_run"] == 2
    assert summary["final_test_acc"] == records[-1]["test_acc"]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 18

    again = runner.invoke(app, ["train", "--config", str(cfg_path), "--run-dir", str(run_dir)])
    assert again.exit_code == 2
    assert "already holds a run" in one_line(again) and "--resume" in one_line(again)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2  # nothing lost


def test_uniform_training_learns(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values, train={"epochs": 4})
    # Without augmentation: a 2-pixel shift would move one synthetic class's band onto another's.
    values["data"] = dict(values["data"], noise={"kind": "none", "rate": 0.0}, augment=False)
    values["select"] = {"method": "uniform", "n_candidates": 64, "n_selected": 32}
    summary = train(load_config(values=values), tmp_path / "run")
    assert summary["final_test_acc"] > 0.6  # 10 classes: chance is 0.1


def test_validation_split_evaluation(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values)
    values["data"] = dict(values["data"], validation_fraction=0.1)
    summary = train(load_config(values=values), tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "test_acc" not in records[-1] and 0.0 <= records[-1]["val_acc"] <= 1.0
    assert summary["final_val_acc"] == records[-1]["val_acc"]
    assert set(summary["epochs_to_target"]) == {"0.3", "0.99"}
    # Without a validation split, the same run measures the test set.
    values["data"]["validation_fraction"] = 0.0
    assert load_config(values=values).eval_split == "test"


class _Stop(KeyboardInterrupt):
    pass


def test_resume_after_kill_matches_uninterrupted(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values, train={"epochs": 3})
    cfg = load_config(values=values)
    full = train(cfg, tmp_path / "full")

    def kill_in_epoch_2(record: dict) -> None:
        if record["epoch"] == 2:  # after epoch 2's metrics, before its checkpoint
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "killed", on_epoch=kill_in_epoch_2)
    assert torch.load(tmp_path / "killed/checkpoint.pt", weights_only=False)["epoch"] == 1
    result = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "killed"), "--resume"])
    assert result.exit_code == 0, result.output

    resumed = json.loads((tmp_path / "killed/summary.json").read_text())
    for key in ("final_test_acc", "best_test_acc", "steps", "samples_seen"):
        assert resumed[key] == full[key], key
    a = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        for key in (
            "test_acc",
            "test_loss",
            "test_acc_ema",
            "train_loss",
            "selected_noisy_frac",
            "step",
        ):
            assert ra[key] == rb[key], key
    ca = torch.load(tmp_path / "full/checkpoint.pt", weights_only=False)
    cb = torch.load(tmp_path / "killed/checkpoint.pt", weights_only=False)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    # The weight EMA (evaluated by default) resumes exactly too.
    assert ca["ema"]["updates"] == cb["ema"]["updates"] == ca["step"]
    ea, eb = ca["ema"]["module"], cb["ema"]["module"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_full_trains_on_every_candidate(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values, train={"epochs": 1})
    values["select"] = {"method": "full", "n_candidates": 64, "n_selected": 16}
    summary = train(load_config(values=values), tmp_path / "run")
    assert summary["samples_seen"] == 9 * 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "select.n_selected=100"], "cannot select more points than there are candidates"),
        (["--set", "zeroshot.holdout_fraction=0.6"], "must be disjoint"),
        (["--set", "model.name=alexnet"], "valid: resnet18, resnet18_cifar"),
        (["--set", "select.method=oracle"], "unknown method 'oracle'; valid: bayesian, full"),
        (["--set", "data.name=svhn"], "data.name: unknown dataset 'svhn'; valid: cifar10"),
        (["--set", "data.root=/nonexistent/fmnist"], "/nonexistent/fmnist does not exist"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(
    tmp_path: Path, tiny_config_values: dict, args: list[str], message: str
):
    cfg_path = _write_config(tmp_path, tiny_config_values)
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--config", str(cfg_path), "--run-dir", str(run_dir), *args]
    )
    assert result.exit_code == 2
    assert message in one_line(result)
    assert not run_dir.exists()


def test_unwritable_run_dir(tmp_path: Path, tiny_config_values: dict):
    cfg_path = _write_config(tmp_path, tiny_config_values)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = runner.invoke(
        app, ["train", "--config", str(cfg_path), "--run-dir", str(blocker / "run")]
    )
    assert result.exit_code == 2
    assert "cannot create run directory" in one_line(result)


def test_resume_refuses_a_changed_config(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values, train={"epochs": 1})
    cfg_path = _write_config(tmp_path, values)
    run_dir = tmp_path / "run"
    assert (
        runner.invoke(app, ["train", "-c", str(cfg_path), "--run-dir", str(run_dir)]).exit_code == 0
    )
    result = runner.invoke(
        app,
        ["train", "-c", str(cfg_path), "--run-dir", str(run_dir), "--resume", "--set", "seed=9"],
    )
    assert result.exit_code == 2 and "config differs" in one_line(result)
    result = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 2


def test_candidate_batchnorm_leaves_running_stats_alone():
    bn = torch.nn.BatchNorm1d(3)
    model = torch.nn.Sequential(bn).train()
    x = torch.randn(8, 3) * 5 + 2
    with batchnorm_batch_stats(model), torch.no_grad():
        out = model(x)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and bn.num_batches_tracked == 0
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert bn.track_running_stats


def test_lr_schedules():
    cfg = load_config("fashion_mnist", ["train.schedule=cosine", "train.epochs=2"]).train
    assert lr_factor(0, cfg, 10) == 1.0
    assert lr_factor(10, cfg, 10) == pytest.approx(0.5)
    assert lr_factor(20, cfg, 10) == pytest.approx(0.0)
    cfg = load_config(
        "fashion_mnist",
        ["train.schedule=step", "train.step_milestones=[1, 2]", "train.step_gamma=0.5"],
    ).train
    assert [lr_factor(s, cfg, 10) for s in (9, 10, 19, 20)] == [1.0, 0.5, 0.5, 0.25]


def test_the_epoch_schedule_is_the_per_step_one_on_full_epochs_and_ends_on_short_ones():
    from bdsel.optim import EpochSchedule

    cfg = load_config("fashion_mnist", ["train.schedule=cosine", "train.epochs=3"]).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule, lrs = EpochSchedule(opt, cfg, 7), []
    for epoch, n_steps in [(0, 7), (1, 7), (2, 7)]:
        schedule.begin_epoch(epoch, n_steps)
        for _ in range(n_steps):
            lrs.append(opt.param_groups[0]["lr"])
            schedule.step()
    assert lrs == [0.1 * lr_factor(s, cfg, 7) for s in range(21)]  # exactly, float for float
    assert opt.param_groups[0]["lr"] == 0.0
    state = schedule.state_dict()
    schedule.begin_epoch(1, 3)  # a pruned epoch of 3 steps covers a whole epoch of the schedule
    for _ in range(3):
        schedule.step()
    assert schedule.factor() == pytest.approx(lr_factor(14, cfg, 7))
    again = EpochSchedule(opt, cfg, 7)
    again.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == 0.0 and again.factor() == 0.0
