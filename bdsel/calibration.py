"""Temperature scaling of a cached predictor (Guo et al., 2017): one scalar T > 0 such that
log_softmax(logprobs / T) has the least negative log-likelihood on labels the predictor never
trained on.

NLL(β) = mean_i [logsumexp_c β z_ic − β z_iy_i] with β = 1/T is convex in β (a logsumexp of
linear functions minus a linear one), so its derivative mean_i [E_softmax(βz_i)[z] − z_iy_i]
increases with β and has at most one zero: bisection on log β finds it to float64 precision
without a step size to tune.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bdsel.data.noise_channel import symmetric_channel

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


def _search_log_t(nll: Callable[[float], float], grid: int, iterations: int) -> float:
    """The log T in [log T_MIN, log T_MAX] of least ``nll``: a ``grid`` of points, then
    golden-section search between the best one's neighbours (a profile NLL need not be convex
    in T; the grid keeps a distant minimum from being missed)."""
    log_ts = torch.linspace(math.log(T_MIN), math.log(T_MAX), grid, dtype=torch.float64).tolist()
    nlls = [nll(t) for t in log_ts]
    i = min(range(grid), key=nlls.__getitem__)
    lo, hi = log_ts[max(i - 1, 0)], log_ts[min(i + 1, grid - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = nll(c), nll(d)
    for _ in range(iterations):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = nll(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = nll(d)
    log_t = 0.5 * (lo + hi)
    return log_ts[i] if nlls[i] < nll(log_t) else log_t  # a minimum on the range's edge


def _check_classes(logprobs: torch.Tensor) -> int:
    n_classes = logprobs.shape[1]
    if n_classes < 2:
        raise ValueError("label noise needs at least two classes")
    return n_classes


def fit_temperature_and_noise(
    logprobs: torch.Tensor, labels: torch.Tensor, grid: int = 41, iterations: int = 50
) -> tuple[float, float]:
    """(T, ε) of least NLL of ``labels`` under symmetric noise of rate ε over softmax(logprobs / T).

    ε is exact for each T (bisection, above); T is searched over log T (``_search_log_t``).
    logprobs: [N, C]; labels: int64 [N]; C >= 2."""
    z = _centred(logprobs)
    n_classes = _check_classes(logprobs)
    y = labels[:, None].long()

    def profile(log_t: float) -> tuple[float, float]:
        p = torch.softmax(z / math.exp(log_t), dim=1).gather(1, y).squeeze(1)
        return _best_noise(p, n_classes, iterations)

    log_t = _search_log_t(lambda t: profile(t)[1], grid, iterations)
    return math.exp(log_t), profile(log_t)[0]


# Noise that is not symmetric (a label flipped to a similar class, as real noise mostly is):
# the observed label through a transition matrix M, M[c, j] = P(observed j | clean c),
#
#     q(y | x) = Σ_c softmax(z / T)_c · M[c, y].
#
# For a fixed T the NLL is convex in M (minus the log of a linear function), and EM's
# update M[c, j] ∝ Σ_{i: y_i = j} r_ic, r_ic = softmax(z_i / T)_c M[c, y_i] / q(y_i | x_i),
# increases the likelihood at every step towards that one optimum; T is searched as above.
# The symmetric channel is the special case M = (1 − ε)·I + ε/(C − 1)·(1 − I), so the matrix
# fits at least as well; which of the two to believe is decided by BIC (``fit_label_noise``).


def _em_step(p: torch.Tensor, labels: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One EM update of M at fixed clean-label probabilities p [N, C] (float64); ``labels``
    int64 [N] observed. M[c, y_i] is gathered and the expected (clean, observed) counts are
    summed by index: the one-hot products without their N x C x C multiplications."""
    joint = p * m.T[labels]  # [N, C]: p_ic · M[c, y_i]
    r = joint / joint.sum(1, keepdim=True).clamp_min(1e-300)
    counts = torch.zeros_like(m).index_add_(1, labels, r.T)  # [C, C]: Σ_{i: y_i = j} r_ic
    total = counts.sum(1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1e-300), m)  # a class nobody has


def _transition_em(p: torch.Tensor, labels: torch.Tensor, m: torch.Tensor, steps: int, tol: float):
    """EM for M at fixed clean-label probabilities p [N, C] (float64), from ``m`` [C, C]:
    (M, mean NLL). labels: the observed ones, int64 [N].

    Accelerated by SQUAREM (Varadhan and Roland, 2008): two EM steps give a direction, an
    extrapolation along it is kept when it stays inside the simplex and does not raise the
    NLL (else the plain EM steps), so the likelihood still increases every step to the same
    optimum (the NLL is convex in M), in a fraction of plain EM's steps."""

    def nll(m: torch.Tensor) -> float:
        q = (p * m.T[labels]).sum(1).clamp_min(1e-300)
        return float(-q.log().mean())

    for _ in range(steps):
        m1 = _em_step(p, labels, m)
        m2 = _em_step(p, labels, m1)
        r, v = m1 - m, m2 - 2 * m1 + m
        new = m2
        if float(v.norm()) > 0:
            alpha = -float(r.norm() / v.norm())
            jump = m - 2 * alpha * r + alpha * alpha * v  # rows still sum to 1
            if bool((jump > 0).all()):  # a zero entry would stay zero under EM: keep m2
                stepped = _em_step(p, labels, jump)
                if nll(stepped) <= nll(m2):
                    new = stepped
        done = float((new - m).abs().max()) < tol
        m = new
        if done:
            break
    return m, nll(m)


def fit_temperature_and_transition(
    logprobs: torch.Tensor,
    labels: torch.Tensor,
    grid: int = 25,
    iterations: int = 20,
    em_steps: int = 300,
    tol: float = 1e-7,
    search_tol: float = 1e-5,
) -> tuple[float, torch.Tensor, float]:
    """(T, M, mean NLL) of least NLL of ``labels`` under q(y | x) = Σ_c softmax(z / T)_c M[c, y]:
    M float64 [C, C], rows summing to 1 (M[c, j] = P(observed j | clean c)). EM for M at each
    T (warm-started from the last one, to ``search_tol`` while T is searched: the profile NLL
    is then off by far less than its differences between T's), T searched over log T; at the
    T found, EM to ``tol`` from the common start. logprobs: [N, C]; labels [N]."""
    z = _centred(logprobs)
    n_classes = _check_classes(logprobs)
    labels = labels.long()
    start = 0.8 * torch.eye(n_classes, dtype=torch.float64) + 0.2 / n_classes
    state = {"m": start}

    def profile(log_t: float, tol: float) -> tuple[torch.Tensor, float]:
        p = torch.softmax(z / math.exp(log_t), dim=1)
        m, nll = _transition_em(p, labels, state["m"], em_steps, tol)
        state["m"] = m
        return m, nll

    log_t = _search_log_t(lambda t: profile(t, search_tol)[1], grid, iterations)
    state["m"] = start  # the final EM from the same start as any other T's
    m, nll = profile(log_t, tol)
    return math.exp(log_t), m, nll


@dataclass(frozen=True)
class NoiseFit:
    """The temperature fitted with label noise, and the noise model it was fitted with."""

    model: str  # "symmetric" or "transition": the one BIC prefers
    temperature: float
    noise_rate: float  # estimated share of observed labels that differ from the clean one
    transition: list[list[float]]  # M[c][j] = P(observed j | clean c) of the chosen model
    bic: dict[str, float]  # each model's BIC, 2·N·NLL + (parameters)·log N (lower: better)


def fit_label_noise(logprobs: torch.Tensor, labels: torch.Tensor) -> NoiseFit:
    """The temperature under the noise model the data call for: symmetric noise (T and ε, two
    parameters) or a full transition matrix (T and C(C − 1) free entries), whichever has the
    lower BIC. On symmetric noise the matrix's extra likelihood is about what C(C − 1) − 1 idle
    parameters would gain by chance (χ² with that many degrees of freedom, halved), far below
    its BIC penalty once N is in the thousands, so the symmetric fit stands; on asymmetric
    noise (pairflip) the likelihood gained is proportional to N and the matrix wins."""
    n, c = logprobs.shape
    t_sym, eps = fit_temperature_and_noise(logprobs, labels)
    nll_sym = _symmetric_nll(logprobs, labels, t_sym, eps)
    t_mat, m, nll_mat = fit_temperature_and_transition(logprobs, labels)
    bic = {
        "symmetric": 2 * n * nll_sym + 2 * math.log(n),
        "transition": 2 * n * nll_mat + (1 + c * (c - 1)) * math.log(n),
    }
    if bic["transition"] < bic["symmetric"]:
        p = torch.softmax(_centred(logprobs) / t_mat, dim=1)
        prior = p.mean(0)  # the clean classes' share, as the fitted predictor sees them
        rate = float(1 - (prior * m.diagonal()).sum())
        return NoiseFit("transition", t_mat, rate, m.tolist(), bic)
    return NoiseFit("symmetric", t_sym, eps, symmetric_channel(eps, c).tolist(), bic)


def _symmetric_nll(logprobs: torch.Tensor, labels: torch.Tensor, t: float, eps: float) -> float:
    c = logprobs.shape[1]
    p = torch.softmax(_centred(logprobs) / t, dim=1).gather(1, labels[:, None].long()).squeeze(1)
    q = (1 - eps) * p + eps * (1 - p) / (c - 1)
    return float(-q.clamp_min(1e-300).log().mean())


def calibration_attrs(
    logprobs: torch.Tensor, labels: torch.Tensor, label_noise: bool
) -> dict[str, Any]:
    """What a cache stores of its calibration rows (``logprobs`` [n, C] of labels the predictor
    never trained on): the ``temperature`` fitted to ``labels``; with ``label_noise`` (labels
    that may be wrong) also the fit under label noise, symmetric or through a transition
    matrix, whichever BIC prefers (:func:`fit_label_noise`)."""
    labels = labels.cpu().long()
    attrs: dict[str, Any] = {"temperature": fit_temperature(logprobs, labels)}
    if label_noise:
        fit = fit_label_noise(logprobs, labels)
        attrs |= {
            "temperature_denoised": fit.temperature,
            "label_noise_rate": fit.noise_rate,
            "noise_model": fit.model,
            "noise_fit": json.dumps({"transition": fit.transition, "bic": fit.bic}),
        }
    return attrs


def calibration_step(
    rows: torch.Tensor, labels: torch.Tensor, label_noise: bool
) -> Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, Any]]:
    """``build_cache``'s finish step that calibrates a cache on ``rows``' ``labels``."""
    return lambda read: calibration_attrs(read(rows), labels, label_noise)
