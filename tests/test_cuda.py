"""CUDA-only checks (``pytest -m cuda``; skipped where no GPU is visible, as on CI).

The training step promises no host synchronisation (statistics stay on the device until the
epoch ends); torch's sync debug mode turns any synchronising call into an error.
"""

from pathlib import Path

import pytest
import torch
from bdsel_cli.main import app
from typer.testing import CliRunner

from bdsel.configure import load_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
runner = CliRunner()


def cuda_values(tiny_config_values: dict, tmp_path: Path, method: str) -> dict:
    values = dict(tiny_config_values)
    values["device"] = "cuda"
    values["select"] = dict(values["select"], method=method)
    if method == "bayesian":
        values["select"]["n_samples"] = 32
    values["zeroshot"] = {
        "predictor": "holdout",
        "cache": str(tmp_path / "zs.h5"),
        "epochs": 2,
        "batch_size": 64,
    }
    return values


@pytest.mark.parametrize("method", ["uniform", "rho_loss", "bayesian"])
def test_a_training_step_never_syncs_the_host(
    tiny_config_values: dict, tmp_path: Path, method: str
):
    import yaml

    from bdsel.assemble import build_run
    from bdsel.forward import autocast_for
    from bdsel.runtime import SectionTimer
    from bdsel.selection import Candidates
    from bdsel.step import EpochStats, Stepper

    values = cuda_values(tiny_config_values, tmp_path, method)
    config_file = tmp_path / "cuda.yaml"
    config_file.write_text(yaml.safe_dump(values))
    if method != "uniform":
        result = runner.invoke(app, ["cache-zeroshot", "-c", str(config_file)])
        assert result.exit_code == 0, result.output
    run = build_run(load_config(values=values))
    assert run.device.type == "cuda"
    autocast = autocast_for(run.device)
    score_autocast = autocast_for(run.device, "bf16")
    stats, timer = EpochStats.zeros(run.device), SectionTimer(run.device)
    g = torch.Generator(device=run.device).manual_seed(0)

    def step(i: int) -> None:
        idx = run.data.train_idx.to(run.device)[64 * i : 64 * (i + 1)]
        cands = Candidates(idx, run.source.rows("train", idx, g), run.observed[idx])
        Stepper(run, run.model, run.model, score_autocast, autocast, timer, stats).step(cands, g)

    step(0)  # first calls may initialise lazily (cuBLAS handles, the posterior's factors)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert stats.n_steps == 4
    assert torch.isfinite(stats.loss_sum).item()


def test_a_short_run_trains_and_evaluates_on_the_gpu(tiny_config_values: dict, tmp_path: Path):
    from bdsel.train import train

    values = cuda_values(tiny_config_values, tmp_path, "uniform")
    summary = train(load_config(values=values), tmp_path / "run")
    assert summary["epochs_run"] == 2
    assert 0.0 < summary["final_test_acc"] <= 1.0
