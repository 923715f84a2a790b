"""Selection methods: the contract over every registered selector, each choice against a
brute force, importance-sampling weights, SVP's coreset, warm-up, and end-to-end runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_images

from bdsel.assemble import build_run
from bdsel.config import Config
from bdsel.configure import load_config
from bdsel.data import Dataset, derive_run_data, from_tensors, make_image_source
from bdsel.forward import autocast_for
from bdsel.models import create_model
from bdsel.selection import (
    Candidates,
    ForwardOutputs,
    SelectorContext,
    list_selectors,
    selector_class,
    selector_from_config,
)
from bdsel.selection.svp import build_coreset, forgetting_events
from bdsel.step import candidate_forward
from bdsel.train import train

CPU = torch.device("cpu")
N_CLASSES = 4
N_CANDIDATES, N_SELECTED = 32, 8
WITH_REPLACEMENT = {"grad_norm_is"}
TRAIN_ON_ALL = {"full", "infobatch"}  # every candidate of a batch
SCORED = ["train_loss", "grad_norm", "grad_norm_is", "irreducible_loss", "rho_loss"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_dataset(n_train: int = 96, size: int = 12, seed: int = 0) -> Dataset:
    x, y = synthetic_images(n_train, N_CLASSES, size, 1, seed)
    xt, yt = synthetic_images(32, N_CLASSES, size, 1, seed + 1)
    return from_tensors(
        "toy",
        torch.from_numpy(x),
        torch.from_numpy(y),
        torch.from_numpy(xt),
        torch.from_numpy(yt),
        [f"c{c}" for c in range(N_CLASSES)],
    )


def tiny_config(method: str, tmp: Path | None = None, **select) -> Config:
    select = {"n_candidates": N_CANDIDATES, "n_selected": N_SELECTED, **select}
    values = {
        "seed": 1,
        "data": {"train_fraction": 1.0, "augment": False},
        "train": {"epochs": 1},
        "select": {"method": method, **select},
        "eval": {"batch_size": 64},
        # never an existing cache: lookups must come from the test, not from a stray file
        "zeroshot": {"cache": str((tmp or Path("/nonexistent")) / "missing.h5")},
    }
    return load_config(values=values)


def random_logprobs(n: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.log_softmax(scale * torch.randn(n, N_CLASSES, generator=gen(seed)), dim=1)


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("method", list_selectors())
def test_every_selector_keeps_the_contract(method: str):
    cfg = tiny_config(method, svp={"epochs": 1, "batch_size": 48, "fraction": 0.5})
    ds = tiny_dataset()
    data = derive_run_data(ds, cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(ds, CPU, augment=False)
    torch.manual_seed(0)
    model = create_model("small_cnn", n_classes=N_CLASSES, in_channels=1)
    n = len(ds.train)
    names = {"il_logprobs", "zs_logprobs", *selector_class(method).requires}
    lookups = {name: random_logprobs(n, seed) for seed, name in enumerate(sorted(names))}

    def build():
        ctx = SelectorContext(
            cfg,
            N_CLASSES,
            model.n_features,
            CPU,
            lookups,
            {"data": data, "source": source, "model": model},
        )
        return selector_from_config(method, ctx)

    selector = build()
    selector.prepare()
    selector.set_epoch(0)
    order = selector.epoch_order(data.train_idx, gen(5))
    assert order.shape == data.train_idx.shape
    assert set(order.tolist()) <= set(data.train_idx.tolist())

    idx = order[:N_CANDIDATES]
    cands = Candidates(idx, source.rows("train", idx), data.observed[idx])
    outputs = None
    if selector.needs_forward:
        outputs = candidate_forward(model, cands.inputs, autocast_for(CPU))
    logits, features = (None, None) if outputs is None else (outputs.logits, outputs.features)
    first = selector.select(idx, cands.labels, logits, features, generator=gen(7))
    again = selector.select(idx, cands.labels, logits, features, generator=gen(7))

    n_expected = N_CANDIDATES if method in TRAIN_ON_ALL else N_SELECTED
    pos = first.positions
    assert pos.dtype == torch.int64 and pos.shape == (n_expected,)
    assert int(pos.min()) >= 0 and int(pos.max()) < N_CANDIDATES
    if method not in WITH_REPLACEMENT:
        assert len(set(pos.tolist())) == n_expected
    assert torch.equal(pos, again.positions)
    if first.weights is not None:
        assert first.weights.shape == (n_expected,)
        assert bool(torch.isfinite(first.weights).all() & (first.weights > 0).all())
        assert torch.equal(first.weights, again.weights)
    for key, value in first.scalars.items():
        assert value.ndim == 0 and bool(torch.isfinite(value)), key

    x = cands.inputs[pos]
    trained_logits, trained_features = model(x)
    selected = Candidates(idx[pos], x, cands.labels[pos])
    selector.observe(selected.indices, selected.labels, trained_logits, trained_features)

    # A selector restored from its state_dict (as on resume) chooses as the original does.
    restored = build()
    restored.load_state_dict(selector.state_dict())
    restored.prepare()
    restored.set_epoch(0)
    want = selector.select(idx, cands.labels, logits, features, generator=gen(9))
    got = restored.select(idx, cands.labels, logits, features, generator=gen(9))
    assert torch.equal(want.positions, got.positions)


# ----------------------------------------------------------------------------- brute force


def fixed_batch(
    n: int = N_CANDIDATES,
    n_total: int = 100,
    seed: int = 0,
    scale: float = 3.0,
    dtype=torch.float64,
):
    """Candidates at random global indices with random logits, and an IL table [n_total, C]."""
    g = gen(seed)
    indices = torch.randperm(n_total, generator=g)[:n]
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    logits = scale * torch.randn(n, N_CLASSES, generator=g, dtype=dtype)
    cands = Candidates(indices, torch.zeros(n, 1, 1, 1), labels)
    outputs = ForwardOutputs(logits, torch.zeros(n, 8, dtype=dtype))
    return cands, outputs, random_logprobs(n_total, seed + 100).to(dtype)


def bare_selector(method: str, il_logprobs: torch.Tensor | None = None, **select):
    lookups = {} if il_logprobs is None else {"il_logprobs": il_logprobs}
    return selector_from_config(
        method, SelectorContext(tiny_config(method, **select), N_CLASSES, 8, CPU, lookups)
    )


def brute_scores(method: str, cands: Candidates, outputs: ForwardOutputs, il: torch.Tensor):
    """Per-candidate preference (higher wins), one point at a time in numpy."""
    logits, il = outputs.logits.numpy(), il.numpy()
    out = []
    for i in range(logits.shape[0]):
        f, y, g = logits[i], int(cands.labels[i]), int(cands.indices[i])
        logp = f - np.log(np.exp(f).sum())
        ce, il_loss = -logp[y], -il[g, y]
        grad_norm = math.sqrt(sum((math.exp(logp[c]) - (c == y)) ** 2 for c in range(len(f))))
        out.append(
            {
                "train_loss": ce,
                "grad_norm": grad_norm,
                "grad_norm_is": grad_norm,
                "irreducible_loss": -il_loss,
                "rho_loss": ce - il_loss,
            }[method]
        )
    return np.array(out)


@pytest.mark.parametrize("method", ["train_loss", "grad_norm", "irreducible_loss", "rho_loss"])
def test_choice_equals_brute_force(method: str):
    cands, outputs, il = fixed_batch()
    selection = bare_selector(method, il).pick(cands, outputs, gen(0))
    scores = brute_scores(method, cands, outputs, il)
    winners = set(np.argsort(-scores)[:N_SELECTED].tolist())
    assert set(selection.positions.tolist()) == winners
    assert selection.weights is None
    # logged means: of the selected and of all candidates, in the method's own units
    sign = -1.0 if method == "irreducible_loss" else 1.0
    logged = {k.rsplit("_", 1)[1]: float(v) for k, v in selection.scalars.items()}
    assert logged["candidates"] == pytest.approx(sign * scores.mean())
    assert logged["selected"] == pytest.approx(sign * scores[sorted(winners)].mean())


def test_rho_loss_uses_the_irreducible_loss():
    cands, outputs, il = fixed_batch(seed=3)
    rho = bare_selector("rho_loss", il).pick(cands, outputs, gen(0)).positions
    loss = bare_selector("train_loss").pick(cands, outputs, gen(0)).positions
    assert set(rho.tolist()) != set(loss.tolist())


def test_missing_lookup_names_the_method():
    cfg = tiny_config("rho_loss")
    with pytest.raises(ValueError, match="select.method=rho_loss needs il_logprobs"):
        selector_from_config("rho_loss", SelectorContext(cfg, N_CLASSES, 8, CPU))


# ----------------------------------------------------------------------------- grad_norm_is


def test_grad_norm_is_weights_match_brute_force():
    cands, outputs, il = fixed_batch()
    selection = bare_selector("grad_norm_is").pick(cands, outputs, gen(1))
    bound = brute_scores("grad_norm_is", cands, outputs, il)
    p = (bound + 1e-8) / (bound + 1e-8).sum()
    expected = 1.0 / (N_CANDIDATES * p[selection.positions.numpy()])
    np.testing.assert_allclose(selection.weights.numpy(), expected, rtol=1e-9)


def test_grad_norm_is_all_zero_bounds_sample_uniformly():
    cands, _, _ = fixed_batch()
    # the observed label's logit so large that softmax is exactly one-hot: every bound is 0
    logits = torch.zeros(N_CANDIDATES, N_CLASSES, dtype=torch.float64)
    logits[torch.arange(N_CANDIDATES), cands.labels] = 1000.0
    selection = bare_selector("grad_norm_is").pick(cands, ForwardOutputs(logits, logits), gen(2))
    assert selection.positions.shape == (N_SELECTED,)
    np.testing.assert_allclose(selection.weights.numpy(), 1.0, rtol=1e-12)


def test_grad_norm_is_is_unbiased_and_samples_proportionally():
    n_b_cands, n_sel, n_calls = 16, 8, 8000
    # float32 as in training (float64 softmax on tiny tensors is slow with 2 threads)
    cands, outputs, il = fixed_batch(n=n_b_cands, scale=2.5, seed=4, dtype=torch.float32)
    selector = bare_selector("grad_norm_is", n_candidates=n_b_cands, n_selected=n_sel)
    g = gen(11)
    draws = [selector.pick(cands, outputs, g) for _ in range(n_calls)]
    positions = torch.cat([d.positions for d in draws]).numpy()
    weights = torch.cat([d.weights for d in draws]).numpy()
    m = positions.shape[0]
    bound = brute_scores("grad_norm_is", cands, outputs, il)
    p = bound / bound.sum()
    assert p.max() / p.min() > 3  # far from uniform, or the checks below prove little

    # E[1/(n_B p)] = Σ p_i / (n_B p_i) = 1; draws are iid, so the mean's sd is sqrt(Var / m).
    var = (1.0 / (n_b_cands**2 * p)).sum() - 1.0
    assert abs(weights.mean() - 1.0) < 5 * math.sqrt(var / m)

    # Pearson's chi-square with 15 degrees of freedom: 37.7 is its 0.999 quantile.
    counts = np.bincount(positions, minlength=n_b_cands)
    chi2 = ((counts - m * p) ** 2 / (m * p)).sum()
    assert chi2 < 37.7


# ----------------------------------------------------------------------------- warm-up


@pytest.mark.parametrize("method", SCORED)
def test_warmup_selects_as_uniform(method: str):
    cands, outputs, il = fixed_batch(seed=5)
    warm = bare_selector(method, il, warmup_epochs=2)
    cold = bare_selector(method, il)
    uniform = bare_selector("uniform")
    uniform_pick = uniform.pick(cands, outputs, gen(3)).positions

    warm.set_epoch(1)
    during = warm.pick(cands, outputs, gen(3))
    assert torch.equal(during.positions, uniform_pick) and during.weights is None
    assert len(during.scalars) == 2  # the score is still logged during warm-up

    warm.set_epoch(2)
    after = warm.pick(cands, outputs, gen(3)).positions
    assert torch.equal(after, cold.pick(cands, outputs, gen(3)).positions)
    assert not torch.equal(after, uniform_pick)


# ----------------------------------------------------------------------------- SVP


def test_forgetting_events_on_a_hand_made_history():
    history = torch.tensor(
        [
            # one column per point: epochs 0..3 top to bottom
            [1, 1, 0, 0, 1, 0],
            [1, 0, 0, 1, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    # always right; right-wrong twice; never learned (T=4); learned then forgotten once;
    # forgotten once then relearned; learned only at the end
    assert forgetting_events(history).tolist() == [0, 2, 4, 1, 1, 0]
    assert forgetting_events(history[:1]).tolist() == [0, 0, 1, 1, 0, 1]


def planted_problem(n_easy: int = 240, n_noise: int = 60, size: int = 12):
    """Easy class images, then pure-noise images with random labels (global indices at the
    end): no proxy can predict the latter, so they are the uncertain / forgotten points."""
    x, y = synthetic_images(n_easy, N_CLASSES, size, 1, seed=2)
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(n_noise, 1, size, size)).astype(np.uint8)
    x = torch.from_numpy(np.concatenate([x, noise]))
    y = torch.from_numpy(np.concatenate([y, rng.integers(0, N_CLASSES, n_noise)]))
    ds = from_tensors("planted", x, y, x[:8], y[:8], [f"c{c}" for c in range(N_CLASSES)])
    return ds, set(range(n_easy, n_easy + n_noise))


@pytest.mark.parametrize("criterion", ["entropy", "least_confidence"])
def test_svp_coreset_finds_the_planted_hard_points(criterion: str):
    ds, hard = planted_problem()
    svp = {"epochs": 4, "batch_size": 32, "lr": 3e-3, "fraction": 0.2, "criterion": criterion}
    cfg = tiny_config("svp", svp=svp)
    data = derive_run_data(ds, cfg.data, cfg.seed, cfg.holdout_fraction)
    source = make_image_source(ds, CPU, augment=False)
    coreset = build_coreset(cfg, data, source, CPU)
    assert coreset.shape == (60,) and len(set(coreset.tolist())) == 60
    assert set(coreset.tolist()) <= set(data.train_idx.tolist())
    assert len(set(coreset.tolist()) & hard) >= 48  # 80%; uniform picks would give 20%


def test_svp_forgetting_coreset_is_the_most_forgotten_points(monkeypatch):
    """The wiring from the proxy's correctness history to the coreset, with a planted history
    (a 4-epoch proxy forgets too little for a planted-data test of this criterion)."""
    ds = tiny_dataset()  # 96 train points, all of them in the train subset
    cfg = tiny_config("svp", svp={"epochs": 3, "fraction": 0.25, "criterion": "forgetting"})
    data = derive_run_data(ds, cfg.data, cfg.seed, cfg.holdout_fraction)
    n = len(data.train_idx)
    forgotten = torch.randperm(n, generator=gen(0))[:24]
    history = torch.ones(3, n, dtype=torch.bool)
    history[0] = False  # everyone wrong in epoch 0, then learned: learning is no event
    history[:, forgotten[:10]] = False  # never learned: counts as 3 events
    history[2, forgotten[10:]] = False  # right in epoch 1, wrong in epoch 2: one event
    monkeypatch.setattr("bdsel.selection.svp.train_proxy", lambda *a: (None, history))
    coreset = build_coreset(cfg, data, None, CPU)
    assert coreset.tolist() == sorted(data.train_idx[forgotten].tolist())


def test_svp_is_deterministic_and_resumes_without_retraining(monkeypatch):
    ds = tiny_dataset()
    cfg = tiny_config("svp", svp={"epochs": 1, "batch_size": 48, "fraction": 0.25})
    data = derive_run_data(ds, cfg.data, cfg.seed, cfg.holdout_fraction)
    extras = {"data": data, "source": make_image_source(ds, CPU, augment=False)}

    def build():
        return selector_from_config("svp", SelectorContext(cfg, N_CLASSES, 8, CPU, {}, extras))

    a, b = build(), build()
    a.prepare()
    b.prepare()
    assert torch.equal(a.coreset, b.coreset) and a.coreset.shape == (24,)

    def no_retraining(*args, **kwargs):
        raise AssertionError("the proxy was retrained on resume")

    monkeypatch.setattr("bdsel.selection.svp.build_coreset", no_retraining)
    resumed = build()
    resumed.load_state_dict(a.state_dict())
    resumed.prepare()
    assert torch.equal(resumed.coreset, a.coreset)


def test_svp_epoch_order_tiles_the_coreset_and_honours_warmup():
    train_idx = torch.arange(100, 196)  # 96 points
    coreset = torch.tensor([101, 107, 130, 150, 151, 160, 170, 180, 190, 195])
    cfg = tiny_config("svp", warmup_epochs=1)
    selector = selector_from_config("svp", SelectorContext(cfg, N_CLASSES, 8, CPU))
    selector.load_state_dict({"coreset": coreset})

    selector.set_epoch(0)  # warm-up: the whole train subset, as uniform sees it
    order = selector.epoch_order(train_idx, gen(0))
    assert sorted(order.tolist()) == train_idx.tolist()

    selector.set_epoch(1)
    order = selector.epoch_order(train_idx, gen(0))
    assert order.shape == (96,)  # as many steps per epoch as every other method
    counts = np.bincount(order.numpy() - 100, minlength=96)[coreset.numpy() - 100]
    assert counts.sum() == 96 and counts.min() >= 9 and counts.max() <= 10
    # each block of 10 is a fresh permutation of the coreset
    assert all(sorted(order[i : i + 10].tolist()) == coreset.tolist() for i in range(0, 90, 10))
    assert torch.equal(order, selector.epoch_order(train_idx, gen(0)))
    assert not torch.equal(order, selector.epoch_order(train_idx, gen(1)))


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["train_loss", "grad_norm", "grad_norm_is", "svp"])
def test_end_to_end_one_epoch(tmp_path: Path, method: str):
    cfg = tiny_config(method, tmp_path, svp={"epochs": 1, "batch_size": 64, "fraction": 0.25})
    summary = train(cfg, tmp_path / "run", dataset=tiny_dataset(n_train=128))
    # 128 train points in candidate batches of 32: 4 steps of 8 selected points
    assert summary["status"] == "complete" and summary["steps"] == 4
    assert summary["samples_seen"] == 4 * N_SELECTED
    record = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1])
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=False)
    if method == "svp":
        assert ckpt["selector"]["coreset"].shape == (32,)
    else:
        assert any(k.startswith("select/") and k.endswith("_selected") for k in record)


@pytest.mark.parametrize("method", ["irreducible_loss", "rho_loss"])
def test_run_without_il_lookup_fails_naming_the_method(tmp_path: Path, method: str):
    cfg = tiny_config(method, tmp_path)
    with pytest.raises(ValueError, match=f"select.method={method}"):
        build_run(cfg, tiny_dataset())


def test_every_method_setting_is_the_config_field_of_its_name():
    """A setting a method's constructor takes comes from the run (seed, epochs, the tables,
    the feature width, the device), from the select field of its name, or from a field of its
    own ``Settings``: a method's new setting without its config field fails here."""
    import dataclasses

    from bdsel.config import SelectConfig
    from bdsel.selection import list_selectors, selector_settings
    from bdsel.selection.configured import config_settings

    the_runs = {"seed", "epochs", "n_features", "device", "zs_logprobs", "il_logprobs",
                "n_rows", "build_coreset", "coreset"}  # fmt: skip
    select = {f.name for f in dataclasses.fields(SelectConfig)} - {"settings"}
    for name in list_selectors():
        own = selector_class(name).Settings
        own_fields = {f.name for f in dataclasses.fields(own)} if own is not None else set()
        for arg in selector_settings(name):
            assert arg in the_runs | select | own_fields, (name, arg)
    # and the values reach it, the run's own taking precedence over its own namesake
    cases = {"bayesian": ("alpha", 0.35, 0.35), "infobatch": ("delta", 0.5, 0.5),
             "svp": ("epochs", 3, 7)}  # fmt: skip  # svp's: train.epochs, not the proxy's
    for method, (setting, given, reaches) in cases.items():
        cfg = load_config(values={"train": {"epochs": 7}},
                          overrides=[f"select.method={method}", f"select.{setting}={given}"])  # fmt: skip
        ctx = SelectorContext(cfg, N_CLASSES, 8, CPU)
        assert cfg.get(f"select.{setting}") == given
        assert config_settings(ctx)[setting] == reaches, method
    assert config_settings(ctx, "bayesian")["alpha"] == 0.2  # a method it does not name: defaults


@pytest.mark.parametrize("alpha", ["adaptive", 0.35])
def test_bayesian_alpha_is_a_weight_or_adaptive_from_each_batch(alpha):
    """select.alpha=adaptive reaches the selector from the config, and each batch's α is then
    CE_zs / (CE_bayes + CE_zs) of that batch's terms (the paper's option); a number is used as
    it is."""
    cands, outputs, zs = fixed_batch(dtype=torch.float32)
    ctx = SelectorContext(tiny_config("bayesian", alpha=alpha), N_CLASSES, 8, CPU,
                          {"zs_logprobs": zs})  # fmt: skip
    selection = selector_from_config("bayesian", ctx).pick(cands, outputs, gen(3))
    got = {k: float(v) for k, v in selection.scalars.items()}
    ce_zs, ce_bayes = -got["term_zs"], -got["term_lme"]
    assert ce_zs == pytest.approx(-float(zs[cands.indices, cands.labels].mean()), rel=1e-5)
    want = ce_zs / (ce_bayes + ce_zs) if alpha == "adaptive" else alpha
    assert got["alpha"] == pytest.approx(want, rel=1e-5)
    assert 0.0 < got["alpha"] < 1.0 and len(selection.positions) == N_SELECTED
