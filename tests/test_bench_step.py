"""benchmarks/bench_step.py times the training loop's own train_step, phase by phase."""

import argparse
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_step", Path(__file__).parents[1] / "benchmarks" / "bench_step.py"
)
bench_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_step)


def test_bench_step_runs_the_real_train_step(monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = bench_step.train_step

    def counting(run, candidates, *rest):
        calls.append(run.selector.name)
        return real(run, candidates, *rest)

    monkeypatch.setattr(bench_step, "train_step", counting)
    args = argparse.Namespace(
        model="small_cnn", classes=10, size=28, channels=1, n_train=200, n_candidates=32,
        n_selected=8, n_samples=8, methods="uniform,bayesian", device="cpu", steps=2, warmup=1,
        compile=False, independent_noise=False, candidate_precision="bf16", nchw=False,
    )  # fmt: skip
    results = bench_step.bench(args)
    # a discarded first round of uniform, then each method: warm-up + timed steps
    assert calls == ["uniform"] * 3 + ["uniform"] * 3 + ["bayesian"] * 3
    assert set(results) == {"uniform", "bayesian"}
    for ms in results.values():
        assert set(bench_step.PHASES) <= set(ms) and ms["train_step"] > 0
        assert ms["step"] == pytest.approx(sum(ms[p] for p in bench_step.PHASES))
    assert results["uniform"]["candidate_forward"] == 0.0  # uniform scores nothing
    assert results["bayesian"]["candidate_forward"] > 0 and results["bayesian"]["observe"] > 0
    assert 0.0 <= results["bayesian"]["top_agreement"] <= 1.0
