"""Temperature scaling of a cached predictor, with and without label noise, against float64
brute force."""

import math

import numpy as np
import pytest
import torch

from bdsel.calibration import (
    T_MAX,
    T_MIN,
    fit_label_noise,
    fit_temperature,
    fit_temperature_and_noise,
    fit_temperature_and_transition,
    nll_at,
)


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


def _noisy(t_true: float, eps: float, n: int = 10000, c: int = 10, seed: int = 0):
    """Labels drawn from softmax(logits / t_true), then each, with probability eps, replaced by
    one of the other c − 1 classes uniformly: symmetric noise of rate eps."""
    logprobs, labels = _synthetic(t_true, n, c, seed)
    g = torch.Generator().manual_seed(seed + 1)
    flip = torch.rand(n, generator=g, dtype=torch.float64) < eps
    shift = torch.randint(1, c, (n,), generator=g)
    return logprobs, torch.where(flip, (labels + shift) % c, labels)


def _noisy_nll_grid(logprobs, labels, t: float, epss: np.ndarray) -> np.ndarray:
    """The channel's NLL at one T for every eps in ``epss``, written out:
    q_y = (1 − eps)·p_y + eps·(1 − p_y)/(c − 1)."""
    c = logprobs.shape[1]
    p = torch.softmax(logprobs.double() / t, 1).gather(1, labels[:, None]).squeeze(1)
    e = torch.as_tensor(epss, dtype=torch.float64)[:, None]
    return (-((1 - e) * p + e * (1 - p) / (c - 1)).log().mean(1)).numpy()


@pytest.mark.parametrize("t_true, eps_true", [(0.5, 0.2), (1.0, 0.4), (2.0, 0.1)])
def test_noise_fit_recovers_a_known_temperature_and_noise_rate(t_true: float, eps_true: float):
    logprobs, labels = _noisy(t_true, eps_true)
    t, eps = fit_temperature_and_noise(logprobs, labels)
    assert t == pytest.approx(t_true, rel=0.08)
    assert eps == pytest.approx(eps_true, abs=0.015)
    # The plain fit explains the wrong labels with a flatter predictor instead.
    assert fit_temperature(logprobs, labels) > 1.2 * t


def test_noise_fit_is_the_least_nll_on_a_brute_force_grid():
    logprobs, labels = _noisy(0.7, 0.25, n=3000, seed=3)
    t, eps = fit_temperature_and_noise(logprobs, labels)
    best = float(_noisy_nll_grid(logprobs, labels, t, np.array([eps]))[0])
    ts = np.exp(np.linspace(math.log(t / 1.3), math.log(t * 1.3), 61))
    epss = np.linspace(max(eps - 0.06, 0.0), eps + 0.06, 61)
    grid = np.array([_noisy_nll_grid(logprobs, labels, float(a), epss) for a in ts])
    assert best <= grid.min() + 1e-9
    i, j = np.unravel_index(int(grid.argmin()), grid.shape)
    assert ts[i] == pytest.approx(t, rel=2 * (ts[1] / ts[0] - 1))
    assert epss[j] == pytest.approx(eps, abs=2 * (epss[1] - epss[0]))


def test_noise_fit_without_noise_is_the_plain_fit():
    logprobs, labels = _synthetic(0.8, n=10000)
    t, eps = fit_temperature_and_noise(logprobs, labels)
    assert 0.0 <= eps < 0.01
    assert t == pytest.approx(fit_temperature(logprobs, labels), rel=0.03)


def test_noise_fit_on_random_labels_finds_them_random():
    logprobs, _ = _synthetic(1.0, n=5000)
    labels = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(9))
    _, eps = fit_temperature_and_noise(logprobs, labels)
    assert eps > 0.85  # 0.9 = (c − 1)/c: every label as likely as any other
    with pytest.raises(ValueError, match="no labelled rows"):
        fit_temperature_and_noise(logprobs[:0], labels[:0])


def _through(t_true: float, m: torch.Tensor, n: int, seed: int = 0):
    """Clean labels drawn from softmax(logits / t_true), then each observed label drawn from
    the clean one's row of the transition matrix ``m`` [C, C]."""
    logprobs, clean = _synthetic(t_true, n, m.shape[0], seed)
    g = torch.Generator().manual_seed(seed + 2)
    return logprobs, torch.multinomial(m[clean], 1, generator=g).squeeze(1)


def _pairflip(c: int, rate: float) -> torch.Tensor:
    m = (1 - rate) * torch.eye(c, dtype=torch.float64)
    m[torch.arange(c), (torch.arange(c) + 1) % c] = rate
    return m


def _transition_nll(logprobs, labels, t: float, m: torch.Tensor) -> float:
    """The channel's mean NLL written out: −log Σ_c softmax(z / T)_c · M[c, y]."""
    p = torch.softmax(logprobs.double() / t, 1)
    return float(-(p * m[:, labels].T).sum(1).log().mean())


def test_transition_fit_recovers_a_known_matrix():
    m_true = torch.tensor(
        [[0.7, 0.2, 0.1, 0.0], [0.0, 0.9, 0.1, 0.0], [0.05, 0.05, 0.8, 0.1], [0.3, 0.0, 0.0, 0.7]],
        dtype=torch.float64,
    )
    logprobs, labels = _through(0.6, m_true, n=40000, seed=5)
    t, m, nll = fit_temperature_and_transition(logprobs, labels)
    assert m.dtype == torch.float64 and torch.allclose(m.sum(1), torch.ones(4, dtype=m.dtype))
    assert t == pytest.approx(0.6, rel=0.06)
    assert (m - m_true).abs().max() < 0.025
    # the maximum of the likelihood: no worse than the truth, nor than a nearby T with its M
    assert nll == pytest.approx(_transition_nll(logprobs, labels, t, m), rel=1e-12)
    assert nll <= _transition_nll(logprobs, labels, 0.6, m_true) + 1e-12
    for other in (t / 1.1, t * 1.1):  # the profile over T: EM written out at another T
        p = torch.softmax(logprobs.double() / other, 1)
        m_other = torch.full((4, 4), 0.25, dtype=torch.float64)
        for _ in range(500):
            r = p * m_other[:, labels].T
            r = r / r.sum(1, keepdim=True)
            counts = torch.zeros(4, 4, dtype=torch.float64).index_add_(1, labels, r.T)
            m_other = counts / counts.sum(1, keepdim=True)
        assert nll < _transition_nll(logprobs, labels, other, m_other)


def test_noise_model_is_chosen_by_the_data():
    # symmetric noise: the matrix's extra parameters buy less than BIC charges
    logprobs, labels = _noisy(0.7, 0.3, n=20000, c=5, seed=2)
    fit = fit_label_noise(logprobs, labels)
    assert fit.model == "symmetric"
    assert (fit.temperature, fit.noise_rate) == pytest.approx(
        fit_temperature_and_noise(logprobs, labels), rel=1e-12
    )
    assert fit.bic["symmetric"] < fit.bic["transition"]
    # pairflip noise: the symmetric fit sees little of it, the matrix all of it
    logprobs, labels = _through(0.7, _pairflip(5, 0.3), n=20000, seed=3)
    fit = fit_label_noise(logprobs, labels)
    assert fit.model == "transition"
    assert fit.noise_rate == pytest.approx(0.3, abs=0.02)
    assert fit.temperature == pytest.approx(0.7, rel=0.06)
    assert (torch.tensor(fit.transition) - _pairflip(5, 0.3)).abs().max() < 0.03
    t_sym, eps_sym = fit_temperature_and_noise(logprobs, labels)
    assert abs(t_sym - 0.7) > abs(fit.temperature - 0.7)  # the symmetric model misfits T
