"""Temperature scaling of a cached predictor (Guo et al., 2017): one scalar T > 0 such that
log_softmax(logprobs / T) has the least negative log-likelihood on labels the predictor never
trained on.

NLL(β) = mean_i [logsumexp_c β z_ic − β z_iy_i] with β = 1/T is convex in β (a logsumexp of
linear functions minus a linear one), so its derivative mean_i [E_softmax(βz_i)[z] − z_iy_i]
increases with β and has at most one zero: bisection on log β finds it to float64 precision
without a step size to tune.
"""

from __future__ import annotations

import math

import torch

# T is searched in [T_MIN, T_MAX]; a predictor that is right on every label pushes T to T_MIN.
T_MIN, T_MAX = 1e-2, 1e2


def nll_at(logprobs: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean −log softmax(logprobs / T)[label] (float64)."""
    z = logprobs.double() / temperature
    return float(-(torch.log_softmax(z, dim=1).gather(1, labels[:, None]).mean()))


def _slope(z: torch.Tensor, z_label: torch.Tensor, beta: float) -> float:
    """d NLL / d β at β: mean over rows of E_softmax(βz)[z] − z_label."""
    p = torch.softmax(beta * z, dim=1)
    return float(((p * z).sum(1) - z_label).mean())


def _centred(logprobs: torch.Tensor) -> torch.Tensor:
    """float64 logprobs minus each row's max, clamped at -1e4: finite where a class has
    log-prob -inf, and softmax(z / T) unchanged. A ValueError for no rows."""
    if logprobs.shape[0] == 0:
        raise ValueError("cannot fit a temperature on no labelled rows")
    z = logprobs.double()
    return (z - z.max(1, keepdim=True).values).clamp_min(-1e4)


def fit_temperature(logprobs: torch.Tensor, labels: torch.Tensor, iterations: int = 100) -> float:
    """The T in [T_MIN, T_MAX] that minimises the mean NLL of ``labels`` under
    softmax(logprobs / T). logprobs: [N, C] log-probabilities (or logits); labels: int64 [N]."""
    z = _centred(logprobs)
    z_label = z.gather(1, labels[:, None].long()).squeeze(1)
    lo, hi = math.log(1.0 / T_MAX), math.log(1.0 / T_MIN)  # over log β
    if _slope(z, z_label, math.exp(lo)) >= 0:
        return T_MAX  # the labels look random to the predictor: flatten it all the way
    if _slope(z, z_label, math.exp(hi)) <= 0:
        return T_MIN  # every label is the predictor's favourite: sharpen all the way
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _slope(z, z_label, math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return 1.0 / math.exp(0.5 * (lo + hi))


# Label noise: the calibration labels may be the observed ones (the crossfit and clip
# predictors calibrate on the training subset's labels, noise included). Fitting T to them
# makes p_zs the probability that the *observed* label is right: a mislabeled point gets about
# ε/(K − 1) however sure the predictor is, and a model trained on cleaner data soon gives it
# less, which is all the bayesian score needs to prefer it. Instead, model the labels as a
# clean label from softmax(z / T) passed through symmetric noise of rate ε,
#
#     q(y | x) = (1 − ε·K/(K − 1))·softmax(z / T)_y + ε/(K − 1),
#
# fit T and ε together by maximum likelihood, and keep softmax(z / T): the clean label's
# probability. ε = 0 is plain temperature scaling.


def _best_noise(p: torch.Tensor, n_classes: int, iterations: int) -> tuple[float, float]:
    """For p_i = softmax(z_i / T)_{y_i} (float64 [N]): the ε in [0, (K − 1)/K] with the least
    NLL of the channel above and that NLL. NLL(ε) = −mean log(p_i + ε·(b − a·p_i)) (a = K/(K−1),
    b = 1/(K−1)) is convex in ε, so its slope's sign bisects to the minimum."""
    a, b = n_classes / (n_classes - 1), 1.0 / (n_classes - 1)
    d = b - a * p

    def slope(eps: float) -> float:
        return float(-(d / (p + eps * d)).mean())

    lo, hi = 0.0, (n_classes - 1) / n_classes
    if slope(lo) >= 0:
        eps = lo  # no noise explains the labels better than the predictor alone
    elif slope(hi) <= 0:
        eps = hi  # the labels look uniformly random
    else:
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        eps = 0.5 * (lo + hi)
    return eps, float(-(p + eps * d).clamp_min(1e-300).log().mean())


def fit_temperature_and_noise(
    logprobs: torch.Tensor, labels: torch.Tensor, grid: int = 41, iterations: int = 50
) -> tuple[float, float]:
    """(T, ε) of least NLL of ``labels`` under symmetric noise of rate ε over softmax(logprobs / T).

    ε is exact for each T (bisection, above); T is searched over log T in [T_MIN, T_MAX]: a
    ``grid`` of points, then golden-section search between the best one's neighbours (the
    profile NLL need not be convex in T; the grid keeps a distant minimum from being missed).
    logprobs: [N, C]; labels: int64 [N]; C >= 2."""
    z = _centred(logprobs)
    n_classes = logprobs.shape[1]
    if n_classes < 2:
        raise ValueError("label noise needs at least two classes")
    y = labels[:, None].long()

    def profile(log_t: float) -> tuple[float, float]:
        p = torch.softmax(z / math.exp(log_t), dim=1).gather(1, y).squeeze(1)
        return _best_noise(p, n_classes, iterations)

    log_ts = torch.linspace(math.log(T_MIN), math.log(T_MAX), grid, dtype=torch.float64).tolist()
    nlls = [profile(t)[1] for t in log_ts]
    i = min(range(grid), key=nlls.__getitem__)
    lo, hi = log_ts[max(i - 1, 0)], log_ts[min(i + 1, grid - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = profile(c)[1], profile(d)[1]
    for _ in range(iterations):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = profile(c)[1]
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = profile(d)[1]
    log_t = 0.5 * (lo + hi)
    eps, nll = profile(log_t)
    if nlls[i] < nll:  # the minimum sits on a grid point at the range's edge
        log_t = log_ts[i]
        eps = profile(log_t)[0]
    return math.exp(log_t), eps
