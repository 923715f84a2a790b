"""The Bayesian selection score against a direct NumPy evaluation, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bdsel.laplace import LastLayerLaplace
from bdsel.selection.bayesian_score import (
    StreamingScore,
    adaptive_alpha,
    bayesian_score,
    score_from_terms,
    score_terms,
    streaming_score_terms,
)

F64 = torch.float64


def np_log_softmax(f: np.ndarray) -> np.ndarray:
    z = f - f.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_terms(samples: np.ndarray, zs_logprobs: np.ndarray, labels: np.ndarray, stable: bool):
    """(mean log-lik, zs log-prob, log mean lik), each [B], straight from the formula."""
    B = labels.shape[0]
    ll = np_log_softmax(samples)[:, np.arange(B), labels]  # [S, B]
    if stable:  # log-mean-exp with max subtraction, for likelihoods that underflow
        mx = ll.max(axis=0)
        lme = mx + np.log(np.mean(np.exp(ll - mx), axis=0))
    else:
        lme = np.log(np.mean(np.exp(ll), axis=0))
    return ll.mean(axis=0), zs_logprobs[np.arange(B), labels], lme


def random_inputs(seed: int, S: int = 7, B: int = 6, C: int = 5, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    samples = scale * torch.randn(S, B, C, generator=gen, dtype=F64)
    zs = torch.log_softmax(torch.randn(B, C, generator=gen, dtype=F64), dim=-1)
    labels = torch.randint(0, C, (B,), generator=gen)
    return samples, zs, labels


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_score_matches_numpy(alpha):
    samples, zs, labels = random_inputs(0)
    mean_ll, zs_lp, lme = np_terms(samples.numpy(), zs.numpy(), labels.numpy(), stable=False)
    expected = alpha * mean_ll + (1 - alpha) * zs_lp - lme
    got = bayesian_score(samples, zs, labels, alpha)
    assert got.shape == (6,) and got.dtype == F64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    terms = score_terms(samples, zs, labels)
    for t, e in zip(terms, (mean_ll, zs_lp, lme), strict=True):
        np.testing.assert_allclose(t.numpy(), e, rtol=1e-12, atol=1e-12)


def test_score_with_extreme_logits_is_finite_and_matches_stable_reference():
    gen = torch.Generator().manual_seed(1)
    S, B, C = 9, 8, 4
    sign = torch.randint(0, 2, (S, B, C), generator=gen).to(F64) * 2 - 1
    samples = 1e3 * sign + torch.randn(S, B, C, generator=gen, dtype=F64)
    zs = torch.log_softmax(torch.randn(B, C, generator=gen, dtype=F64), dim=-1)
    labels = torch.randint(0, C, (B,), generator=gen)
    # Half the points: every sample puts −1e3 on the label and +1e3 elsewhere, so every
    # p(y|f_s) ≈ exp(−2000) underflows; the rest keep random ±1e3 logits.
    idx = torch.arange(0, B, 2)
    samples[:, idx, labels[idx]] = -1e3 + torch.randn(S, idx.numel(), generator=gen, dtype=F64)
    samples[:, idx, (labels[idx] + 1) % C] = 1e3
    s_np, zs_np, y_np = samples.numpy(), zs.numpy(), labels.numpy()
    # The naive evaluation really breaks here: exp(−2000) underflows, log(0) = −inf ...
    with np.errstate(divide="ignore", over="ignore"):
        assert not np.isfinite(np_terms(s_np, zs_np, y_np, stable=False)[2]).all()
        assert not np.isfinite(np.exp(s_np)).all()  # ... and exp(+1e3) overflows
    mean_ll, zs_lp, lme = np_terms(s_np, zs_np, y_np, stable=True)
    got = bayesian_score(samples, zs, labels, 0.3)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), 0.3 * mean_ll + 0.7 * zs_lp - lme, rtol=1e-10)


def test_alpha_as_tensor_matches_float():
    samples, zs, labels = random_inputs(2)
    ref = bayesian_score(samples, zs, labels, 0.25)
    torch.testing.assert_close(bayesian_score(samples, zs, labels, torch.tensor(0.25)), ref)
    per_point = torch.full((6,), 0.25, dtype=F64)
    torch.testing.assert_close(bayesian_score(samples, zs, labels, per_point), ref)
    assert not torch.allclose(bayesian_score(samples, zs, labels, 0.75), ref)


def test_bf16_inputs_are_scored_in_float32():
    samples, zs, labels = random_inputs(3)
    got = bayesian_score(samples.bfloat16(), zs.bfloat16(), labels, 0.3)
    assert got.dtype == torch.float32
    ref = bayesian_score(samples.bfloat16().float(), zs.bfloat16().float(), labels, 0.3)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sizes", [(1,) * 11, (3, 3, 5), (11,), (4, 1, 6)])
def test_streaming_score_equals_one_shot(sizes):
    samples, zs, labels = random_inputs(4, S=11, scale=30.0)  # large spread: lse matters
    chunks = torch.split(samples, list(sizes))
    one_shot = score_terms(samples, zs, labels)
    streamed = streaming_score_terms(chunks, zs, labels)
    for a, b in zip(streamed, one_shot, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        score_from_terms(streaming_score_terms(chunks, zs, labels), 0.3),
        bayesian_score(samples, zs, labels, 0.3),
        rtol=1e-12,
        atol=1e-12,
    )
    acc = StreamingScore(labels)
    for c in chunks:
        acc.update(c)
    assert acc.n_samples == 11


def test_streaming_score_from_laplace_chunks():
    gen = torch.Generator().manual_seed(5)
    D, C, B = 4, 6, 5
    post = LastLayerLaplace(D, C, dtype=F64)
    h = torch.randn(B, D, generator=gen, dtype=F64)
    post.update(h, torch.softmax(torch.randn(B, C, generator=gen, dtype=F64), -1), torch.arange(B))
    f_bar = torch.randn(B, C, generator=gen, dtype=F64)
    zs = torch.log_softmax(torch.randn(B, C, generator=gen, dtype=F64), -1)
    labels = torch.randint(0, C, (B,), generator=gen)
    chunks = list(post.iter_logit_samples(f_bar, h, 50, generator=gen, max_elements=B * C * 8))
    assert len(chunks) == 7
    torch.testing.assert_close(
        score_from_terms(streaming_score_terms(iter(chunks), zs, labels), 0.3),
        bayesian_score(torch.cat(chunks), zs, labels, 0.3),
        rtol=1e-12,
        atol=1e-12,
    )


def test_adaptive_alpha_matches_formula():
    samples, zs, labels = random_inputs(6)
    terms = score_terms(samples, zs, labels)
    ce_zs = -terms.zs_logprob.numpy().mean()
    ce_bayes = -terms.log_mean_lik.numpy().mean()
    alpha = adaptive_alpha(terms.zs_logprob, terms.log_mean_lik)
    assert alpha.shape == () and alpha.dtype == F64
    np.testing.assert_allclose(alpha.numpy(), ce_zs / (ce_bayes + ce_zs), rtol=1e-12)
    assert 0.0 < alpha.item() < 1.0
    # Zero-shot perfect (CE_zs = 0) → α = 0; both perfect → 0, not NaN.
    zero = torch.zeros(6, dtype=F64)
    assert adaptive_alpha(zero, terms.log_mean_lik).item() == 0.0
    assert adaptive_alpha(zero, zero).item() == 0.0
    # Usable directly as the score's alpha.
    score = bayesian_score(samples, zs, labels, alpha)
    torch.testing.assert_close(score, bayesian_score(samples, zs, labels, alpha.item()))


def test_planted_noisy_twins_rank_clean_copy_first():
    """Twins share (almost) features and logits; one has the true label, one a flipped one.

    The zero-shot predictor puts 0.7 on the true class; the model is early in training
    (weakly informative logits). The score must prefer the clean twin, while a plain
    loss ranking (−log E_s p(y|f_s), what the score reduces to without the zero-shot
    term) prefers the flipped twin, as loss-based selection does on noisy data.
    """
    gen = torch.Generator().manual_seed(7)
    D, C, n_pairs = 16, 10, 200
    mu = torch.randn(C, D, generator=gen, dtype=F64)
    W = 0.05 * mu  # an early, weakly trained last layer (~0.2 on the true class)

    def draw(n: int):
        y = torch.randint(0, C, (n,), generator=gen)
        h = mu[y] + torch.randn(n, D, generator=gen, dtype=F64)
        return h, y

    post = LastLayerLaplace(D, C, prior_precision=10.0, n_effective=200.0, dtype=F64)
    for _ in range(5):  # a few clean batches of 32
        h, y = draw(32)
        post.update(h, torch.softmax(h @ W.T, -1), y)

    h, y_true = draw(n_pairs)
    y_flip = (y_true + torch.randint(1, C, (n_pairs,), generator=gen)) % C  # ≠ y_true
    h2 = torch.cat([h, h + 1e-3 * torch.randn(n_pairs, D, generator=gen, dtype=F64)])
    logits = h2 @ W.T
    labels = torch.cat([y_true, y_flip])
    zs_p = torch.full((2 * n_pairs, C), 0.3 / (C - 1), dtype=F64)
    zs_p[torch.arange(2 * n_pairs), torch.cat([y_true, y_true])] = 0.7
    zs = zs_p.log()

    samples = post.sample_logits(logits, h2, 256, generator=gen)
    score = bayesian_score(samples, zs, labels, 0.3)
    clean_wins = (score[:n_pairs] > score[n_pairs:]).double().mean().item()
    assert clean_wins > 0.9  # uniform random choice: ~0.5

    loss = -score_terms(samples, zs, labels).log_mean_lik
    assert (loss[:n_pairs] > loss[n_pairs:]).double().mean().item() < 0.1
