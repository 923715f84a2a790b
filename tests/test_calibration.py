"""Temperature scaling of a cached predictor, against float64 brute force."""

import math

import numpy as np
import pytest
import torch

from bdsel.zeroshot.calibration import T_MAX, T_MIN, fit_temperature, nll_at


def _synthetic(t_true: float, n: int = 20000, c: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / t_true, 1), 1, generator=g).squeeze(1)
    return torch.log_softmax(logits, 1), labels


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(t_true: float):
    logprobs, labels = _synthetic(t_true)
    t = fit_temperature(logprobs, labels)
    assert t == pytest.approx(t_true, rel=0.05)
    # Brute force: the NLL on a fine grid of T is nowhere lower than at the fitted T.
    grid = np.exp(np.linspace(math.log(t / 1.5), math.log(t * 1.5), 301))
    nlls = [nll_at(logprobs, labels, float(x)) for x in grid]
    assert nll_at(logprobs, labels, t) <= min(nlls) + 1e-12
    assert grid[int(np.argmin(nlls))] == pytest.approx(t, rel=2 * (grid[1] / grid[0] - 1))


def test_fit_clamps_to_its_range_and_refuses_no_rows():
    logprobs = torch.log_softmax(torch.tensor([[5.0, 0.0], [0.0, 5.0]], dtype=torch.float64), 1)
    assert fit_temperature(logprobs, torch.tensor([0, 1])) == T_MIN  # always right
    assert fit_temperature(logprobs, torch.tensor([1, 0])) == T_MAX  # always wrong
    with pytest.raises(ValueError, match="no labelled rows"):
        fit_temperature(logprobs[:0], torch.tensor([], dtype=torch.long))


def test_fit_tolerates_impossible_classes():
    logprobs, labels = _synthetic(1.5, n=5000)
    logprobs[:, 0] = -math.inf  # a class the predictor rules out entirely
    keep = labels != 0
    t = fit_temperature(logprobs[keep], labels[keep])
    assert math.isfinite(t) and T_MIN < t < T_MAX
