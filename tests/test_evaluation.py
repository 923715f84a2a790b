"""The weight EMA, BN recalibration and what a record evaluates (bdsel.evaluation)."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bdsel.config import ConfigError
from bdsel.configure import load_config
from bdsel.evaluation import (
    EMA_WARMUP_POWER,
    WeightEMA,
    recalibrate_batchnorm,
)
from bdsel.models import create_model, list_models
from bdsel.train import train

SIZES = {"vit_b16": 32, "resnet18": 32, "resnet18_cifar": 32, "small_cnn": 28}


def model_in(name: str) -> int:
    return 1 if name == "small_cnn" else 3


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


def test_ema_equals_the_warmup_formula_in_float64():
    torch.manual_seed(0)
    net = _tiny_net()
    decay, k = 0.9, 40  # a low cap so that both the warm-up and the cap are exercised
    ema = WeightEMA(net, decay)
    reference = None
    for t in range(1, k + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.normal_()
            net[1].running_var.uniform_(0.5, 2.0)
            net[1].num_batches_tracked += 1
        ema.update(net)
        current = {n: v.clone() for n, v in net.state_dict().items()}
        if reference is None:  # the first update copies
            reference = current
            continue
        d = min(decay, 1.0 - (1.0 + (t - 1)) ** -EMA_WARMUP_POWER)
        for n, v in current.items():
            if v.is_floating_point():
                reference[n] = d * reference[n] + (1 - d) * v
            else:
                reference[n] = v  # counters are copied, not averaged
    assert ema.updates == k
    for n, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, reference[n], rtol=0, atol=1e-12, msg=n)
    assert not torch.equal(ema.module[0].weight, net[0].weight)


def test_ema_state_round_trips():
    net = _tiny_net()
    ema = WeightEMA(net, 0.99)
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        ema.update(net)
    other = WeightEMA(_tiny_net(), 0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    assert torch.equal(other.module[0].weight, ema.module[0].weight)


def _simulate_train_mode(x_batches, conv1, conv2):
    """Brute force in float64: the inputs of both BN layers when every batch is normalised
    with its own statistics (BatchNorm in train mode, weight 1, bias 0)."""

    def bn_train(h):
        mean = h.mean((0, 2, 3), keepdim=True)
        var = h.var((0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5)

    first, second = [], []
    for x in x_batches:
        h1 = conv1(x)
        first.append(h1)
        second.append(conv2(torch.relu(bn_train(h1))))
    return torch.cat(first), torch.cat(second)


def test_recalibrated_statistics_are_those_of_the_sample():
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(2, 3, 3).double(), nn.Conv2d(3, 4, 3).double()
    model = nn.Sequential(conv1, nn.BatchNorm2d(3), nn.ReLU(), conv2, nn.BatchNorm2d(4)).double()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.fill_(7.0)  # stale statistics that must be replaced
            bn.running_var.fill_(9.0)
    batches = [torch.randn(n, 2, 8, 8, dtype=torch.float64) * 3 + 1 for n in (5, 5, 3)]
    assert recalibrate_batchnorm(model, batches) == 2
    with torch.no_grad():
        h1, h2 = _simulate_train_mode(batches, conv1, conv2)
    for bn, h in ((model[1], h1), (model[4], h2)):
        flat = h.transpose(0, 1).reshape(h.shape[1], -1)
        torch.testing.assert_close(bn.running_mean, flat.mean(1), rtol=0, atol=1e-10)
        torch.testing.assert_close(bn.running_var, flat.var(1, unbiased=True), rtol=0, atol=1e-10)
    model.eval()
    recalibrate_batchnorm(model, batches)
    assert not model.training


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_the_ema_and_recalibration(name: str):
    torch.manual_seed(0)
    model = create_model(name, n_classes=3, in_channels=model_in(name))
    ema = WeightEMA(model, 0.998)
    x = torch.randn(4, model_in(name), SIZES[name], SIZES[name])
    model.train()
    model(x)[0].sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad if p.grad is not None else 0.0)
    ema.update(model)
    ema.update(model)
    assert all(
        torch.equal(a, b) for a, b in zip(ema.module.parameters(), model.parameters(), strict=True)
    )
    n_bn = recalibrate_batchnorm(ema.module, [x, x + 1])
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert (n_bn > 0) == has_bn
    assert not ema.module.training  # the EMA stays in eval mode


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_is_unchanged_by_the_ema(tmp_path: Path, tiny_config_values: dict):
    """A run with a weight EMA trains exactly as one without (train.ema_decay=0): the EMA and
    its evaluation take nothing from training's random streams or weights. The first
    evaluates the EMA, the second the online weights."""
    values = dict(tiny_config_values, eval={"batch_size": 128})
    train(load_config(values=values), tmp_path / "ema")
    values["train"] = dict(values["train"], ema_decay=0.0)
    train(load_config(values=values), tmp_path / "plain")
    a, b = _records(tmp_path / "ema"), _records(tmp_path / "plain")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert all(r["test_acc"] == r["test_acc_ema"] for r in a)
    assert all(r["test_acc"] == r["test_acc_online"] for r in b)
    assert not any("test_acc_online" in r for r in a)  # only the evaluated weights are
    assert not any("test_acc_ema" in r for r in b)
    wa = torch.load(tmp_path / "ema/checkpoint.pt", weights_only=False)
    wb = torch.load(tmp_path / "plain/checkpoint.pt", weights_only=False)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert wb["ema"] is None and wa["ema"]["updates"] == a[-1]["step"]


def test_records_carry_the_evaluated_weights_only(tmp_path: Path, tiny_config_values: dict):
    values = dict(tiny_config_values)
    values["eval"] = {"batch_size": 128}
    summary = train(load_config(values=values), tmp_path / "run")
    last = _records(tmp_path / "run")[-1]
    assert last["test_acc"] == last["test_acc_ema"]
    assert summary["final_test_acc"] == last["test_acc"]
    assert "test_acc_online" not in last  # only the evaluated weights are
    # Recalibration evaluates a copy: the online model's running statistics are training's.
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=False)
    bn_means = [v for k, v in ckpt["model"].items() if k.endswith("running_mean")]
    ema_means = [v for k, v in ckpt["ema"]["module"].items() if k.endswith("running_mean")]
    assert bn_means and not all(torch.equal(a, b) for a, b in zip(bn_means, ema_means, strict=True))


def test_ema_config_is_checked(tiny_config_values: dict):
    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(values=dict(tiny_config_values, train={"ema_decay": 1.0}))
    assert load_config(values=tiny_config_values).evaluated_weights == "ema"
    cfg = load_config(values=dict(tiny_config_values, train={"ema_decay": 0.0}))
    assert cfg.evaluated_weights == "online"


def test_early_stopping_keeps_the_best_epoch(tiny_config_values: dict):
    from bdsel.data import derive_run_data, load_dataset, make_image_source
    from bdsel.fit import EarlyStopping, fit_supervised
    from bdsel.optim import build_optimizer

    cfg = load_config(values=tiny_config_values)
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(data.dataset, torch.device("cpu"))
    model = create_model("small_cnn", n_classes=10, in_channels=1)
    planned = iter([0.5, 0.7, 0.6, 0.65, 0.55, 0.9])  # the 6th would win, if it ran
    snapshots: list[dict] = []

    def score(m: nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(planned)

    stop = EarlyStopping(score, patience=2)
    out = fit_supervised(
        model,
        source,
        data.holdout_idx[:128],
        data.clean,
        epochs=6,
        batch_size=64,
        optimizer=build_optimizer(model, cfg.train),
        seed=0,
        ema_decay=0.9,
        early_stopping=stop,
    )
    assert stop.epochs_run == 4 and stop.best_epoch == 2 and stop.best_score == 0.7
    assert stop.scores == [0.5, 0.7, 0.6, 0.65]
    final = out.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)  # epoch 2's weights
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)
    assert out is not model and not out.training  # the EMA's copy, in eval mode


def test_no_patience_scores_only_the_last_epoch_and_cosine_ends_at_zero(tiny_config_values: dict):
    """patience 0 runs every epoch and scores (and keeps) only the last; the cosine schedule
    takes the learning rate from its base to 0 over the fit, as the brute-force formula."""
    import math

    from bdsel.data import derive_run_data, load_dataset, make_image_source
    from bdsel.fit import EarlyStopping, fit_supervised
    from bdsel.optim import build_optimizer

    cfg = load_config(values=tiny_config_values)
    data = derive_run_data(load_dataset(cfg.data), cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(data.dataset, torch.device("cpu"))
    model = create_model("small_cnn", n_classes=10, in_channels=1)
    optimizer = build_optimizer(model, cfg.train)
    base_lr = optimizer.param_groups[0]["lr"]
    rates: list[float] = []
    scored: list[dict] = []

    def score(m: nn.Module) -> float:
        scored.append({k: v.clone() for k, v in m.state_dict().items()})
        return 0.5

    stop = EarlyStopping(score, patience=0)
    out = fit_supervised(
        model,
        source,
        data.holdout_idx[:128],  # 2 steps per epoch
        data.clean,
        epochs=3,
        batch_size=64,
        optimizer=optimizer,
        seed=0,
        early_stopping=stop,
        schedule="cosine",
        on_batch=lambda *_: rates.append(optimizer.param_groups[0]["lr"]),
    )
    assert len(scored) == 1 and stop.epochs_run == 3 and stop.best_epoch == 3
    assert all(torch.equal(out.state_dict()[k], v) for k, v in scored[0].items())
    # on_batch runs after the step: the rate the next step will use
    expected = [base_lr * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(1, 7)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[-1] == pytest.approx(0.0, abs=1e-15)
