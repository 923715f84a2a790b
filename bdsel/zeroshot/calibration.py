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


def fit_temperature(logprobs: torch.Tensor, labels: torch.Tensor, iterations: int = 100) -> float:
    """The T in [T_MIN, T_MAX] that minimises the mean NLL of ``labels`` under
    softmax(logprobs / T). logprobs: [N, C] log-probabilities (or logits); labels: int64 [N]."""
    if logprobs.shape[0] == 0:
        raise ValueError("cannot fit a temperature on no labelled rows")
    z = logprobs.double()
    z = z - z.max(1, keepdim=True).values  # finite where a class has log-prob -inf
    z = z.clamp_min(-1e4)
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
