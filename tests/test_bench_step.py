"""benchmarks/bench_step.py times the training loop's own step (Stepper.step), phase by phase."""

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
    real = bench_step.Stepper.step

    def counting(self, candidates, generator):
        calls.append(self.run.selector.name)
        return real(self, candidates, generator)

    monkeypatch.setattr(bench_step.Stepper, "step", counting)
    args = argparse.Namespace(
        model="small_cnn", classes=10, size=28, channels=1, n_train=200, n_candidates=32,
        n_selected=8, n_samples=8, methods="uniform,bayesian", device="cpu", steps=2, warmup=1,
        compile=False, independent_noise=False, candidate_precision="bf16", nchw=False,
        rescore=1.0, profile=True,
    )  # fmt: skip
    out = bench_step.bench(args)
    results = out["ms"]
    # a discarded first round of uniform, then each method: warm-up + timed + profiled steps
    assert calls == ["uniform"] * 5 + ["uniform"] * 5 + ["bayesian"] * 5
    assert set(results) == {"uniform", "bayesian"}
    for ms in results.values():
        assert set(bench_step.PHASES) <= set(ms) and ms["train_step"] > 0
        assert ms["step"] == pytest.approx(sum(ms[p] for p in bench_step.PHASES))
    assert results["uniform"]["candidate_forward"] == 0.0  # uniform scores nothing
    assert results["bayesian"]["candidate_forward"] > 0 and results["bayesian"]["observe"] > 0
    assert 0.0 <= results["bayesian"]["top_agreement"] <= 1.0

    # The profile names train_step's phases; they nest in the step and add up to at most it.
    phases = out["profile"]["bayesian"]["phases_ms"]
    named = {"candidate_forward", "select", "train_forward_backward", "optimizer", "ema_update"}
    assert named | {"observe", "bookkeeping", "step"} <= set(phases)
    assert sum(v for k, v in phases.items() if k != "step") <= phases["step"]
    assert "candidate_forward" not in out["profile"]["uniform"]["phases_ms"]
    assert out["profile"]["bayesian"]["top_ops_self_ms"]
