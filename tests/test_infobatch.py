"""InfoBatch (issue 27): the kept set and weights against a float64 re-statement, the annealed
epochs, scores from the training forward, and a killed, resumed run equal to an uninterrupted
one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bdsel_cli.main import app
from typer.testing import CliRunner

import bdsel
from bdsel.configure import load_config
from bdsel.selection.infobatch import INITIAL_SCORE, infobatch_plan
from bdsel.train import train

runner = CliRunner()


def restated_plan(train_idx: list[int], scores: list[float], keep_ratio: float, seed: int):
    """The algorithm in plain Python and float64, with the documented draws."""
    s = [float(scores[i]) for i in train_idx]
    mean = sum(s) / len(s)
    well = sorted(i for i in train_idx if float(scores[i]) < mean)
    rest = sorted(i for i in train_idx if float(scores[i]) >= mean)
    g = torch.Generator().manual_seed(seed)
    k = int(keep_ratio * len(well))
    perm = torch.randperm(len(well), generator=g).tolist()
    kept = [well[p] for p in perm[:k]]
    pool = rest + kept
    weight = {i: 1.0 for i in rest} | {i: 1.0 / keep_ratio for i in kept}
    order = [pool[p] for p in torch.randperm(len(pool), generator=g).tolist()]
    return order, [weight[i] for i in order], set(well) - set(kept)


@pytest.mark.parametrize(("keep_ratio", "seed"), [(0.5, 0), (0.3, 1), (0.1, 2)])
def test_kept_set_and_weights_equal_the_restated_algorithm(keep_ratio: float, seed: int):
    g = torch.Generator().manual_seed(100 + seed)
    scores = torch.rand(80, generator=g, dtype=torch.float64) * 2
    train_idx = torch.randperm(80, generator=g)[:60]
    order, weights = infobatch_plan(
        train_idx, scores, keep_ratio, torch.Generator().manual_seed(seed)
    )
    want_order, want_weights, dropped = restated_plan(
        train_idx.tolist(), scores.tolist(), keep_ratio, seed
    )
    assert order.tolist() == want_order
    assert weights.double().tolist() == pytest.approx(want_weights, abs=1e-6)
    assert set(order.tolist()) | dropped == set(train_idx.tolist())  # nothing else lost
    assert len(dropped) == len(train_idx) - len(order) > 0


def test_pruning_then_annealed_epochs_and_scores_from_the_training_forward():
    selector = bdsel.create_selector("infobatch", n_rows=40, epochs=8, prune_ratio=0.5, delta=0.75)
    train_idx = torch.arange(40)
    selector.set_epoch(0)
    first = selector.epoch_order(train_idx, torch.Generator().manual_seed(0))
    assert sorted(first.tolist()) == list(range(40))  # all scores equal (3): none below the mean
    assert torch.equal(selector.scores, torch.full((40,), INITIAL_SCORE))

    logits = torch.zeros(40, 4)
    labels = torch.arange(40) % 4
    logits[torch.arange(20), labels[:20]] = 9.0  # the first 20 are learned, the rest are not
    selector.observe(train_idx, labels, logits, torch.zeros(40, 2))
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(selector.scores, ce)

    selector.set_epoch(5)  # 5 + 1 <= 0.75 * 8: pruning
    order = selector.epoch_order(train_idx, torch.Generator().manual_seed(1))
    assert len(order) == 30 and set(range(20, 40)) <= set(order.tolist())
    selection = selector.select(order[:16], (order[:16] % 4))
    assert torch.equal(selection.positions, torch.arange(16))
    learned = order[:16] < 20
    assert torch.equal(selection.weights, torch.where(learned, 2.0, 1.0))
    assert float(selection.scalars["pruned"]) == 10

    selector.set_epoch(6)  # annealed: every point, weight 1
    order = selector.epoch_order(train_idx, torch.Generator().manual_seed(2))
    assert sorted(order.tolist()) == list(range(40))
    assert selector.select(order[:16], order[:16] % 4).weights is None


def test_a_killed_and_resumed_infobatch_run_equals_an_uninterrupted_one(
    tmp_path: Path, tiny_config_values: dict
):
    class Stop(KeyboardInterrupt):
        pass

    values = dict(tiny_config_values, train={"epochs": 4})
    values["select"] = {"method": "infobatch", "n_candidates": 32, "delta": 0.75}
    cfg = load_config(values=values)
    full = train(cfg, tmp_path / "full")

    def stop(record: dict) -> None:
        if record["epoch"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "killed", on_epoch=stop)
    result = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "killed"), "--resume"])
    assert result.exit_code == 0, result.output
    a = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    keys = ("test_acc", "test_loss", "train_loss", "selected_noisy_frac", "step", "samples_seen")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    steps = [r["step"] for r in a]
    per_epoch = [steps[0]] + [y - x for x, y in zip(steps, steps[1:], strict=False)]
    assert per_epoch[1] < per_epoch[0] and per_epoch[3] == per_epoch[0]  # pruned, then all
    assert full["steps"] == steps[-1]


def original_pruning_epochs(epochs: int, delta: float) -> list[bool]:
    """Which epochs InfoBatch's own sampler prunes: it resets once when it is made and once
    per epoch, and prunes while its reset count is at most delta · epochs."""
    stop_prune = epochs * delta
    pruned = [not iterations > stop_prune for iterations in range(epochs + 1)]
    return pruned[1:]  # the reset at construction is no epoch


@pytest.mark.parametrize("delta", [0.0, 0.1, 0.25, 0.5, 0.7, 0.875, 0.9, 0.99, 1.0])
def test_the_pruned_epochs_are_the_originals(delta: float):
    for epochs in range(1, 201):
        selector = bdsel.create_selector("infobatch", n_rows=4, epochs=epochs, delta=delta)
        ours = []
        for epoch in range(epochs):
            selector.set_epoch(epoch)
            ours.append(selector.pruning)
        assert ours == original_pruning_epochs(epochs, delta), (epochs, delta)
    assert sum(original_pruning_epochs(15, 0.875)) == 13  # floor(13.125), the peers table's


def test_a_cosine_schedule_reaches_zero_at_the_last_step_of_a_pruned_run(
    tmp_path: Path, tiny_config_values: dict, monkeypatch: pytest.MonkeyPatch
):
    from bdsel.assemble import build_run
    from bdsel.optim import EpochSchedule

    values = dict(tiny_config_values, train={"epochs": 4, "schedule": "cosine"})
    values["select"] = {"method": "infobatch", "n_candidates": 16, "n_selected": 16,
                        "delta": 1.0}  # fmt: skip
    cfg = load_config(values=values)
    full_steps = cfg.train.epochs * build_run(cfg).steps_per_epoch
    factors: list[float] = []
    real = EpochSchedule.step

    def spy(self) -> None:
        real(self)
        factors.append(self.factor())

    monkeypatch.setattr(EpochSchedule, "step", spy)
    train(cfg, tmp_path / "run")
    assert len(factors) < full_steps  # pruned epochs are shorter
    assert factors[-1] == 0.0 and factors[0] < 1.0
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
