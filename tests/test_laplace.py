"""Float64 checks of the last-layer KFAC Laplace posterior against dense brute force."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.distributed as dist

from bdsel.laplace import LastLayerLaplace

F64 = torch.float64


def random_batch(gen: torch.Generator, B: int, D: int, C: int) -> tuple[torch.Tensor, ...]:
    """features [B,D], probs [B,C], labels [B] in float64."""
    h = torch.randn(B, D, generator=gen, dtype=F64)
    p = torch.softmax(torch.randn(B, C, generator=gen, dtype=F64), dim=-1)
    y = torch.randint(0, C, (B,), generator=gen)
    return h, p, y


def fitted_posterior(D: int = 3, C: int = 4, n_batches: int = 3, seed: int = 0, **kw):
    gen = torch.Generator().manual_seed(seed)
    kw = {"prior_precision": 0.5, "n_effective": 50.0, "momentum": 0.8, **kw}
    post = LastLayerLaplace(D, C, dtype=F64, **kw)
    for _ in range(n_batches):
        post.update(*random_batch(gen, 6, D, C))
    return post, gen


def test_fisher_kind_is_validated():
    with pytest.raises(ValueError, match="empirical.*ggn"):
        LastLayerLaplace(3, 2, fisher="kfac")


def test_precision_factors_follow_the_formula():
    post, _ = fitted_posterior()
    V, U = post.precision_factors()
    sne, stau = math.sqrt(50.0), math.sqrt(0.5)
    torch.testing.assert_close(V, sne * post.A + stau * torch.eye(3, dtype=F64))
    torch.testing.assert_close(U, sne * post.G + stau * torch.eye(4, dtype=F64))


def test_functional_variance_matches_dense_kronecker_posterior():
    D, C, B = 3, 4, 5
    post, gen = fitted_posterior(D, C)
    V, U = post.precision_factors()
    h = torch.randn(B, D, generator=gen, dtype=F64)

    # Ordering: W ∈ R^{C×D}, vec(W) stacks the COLUMNS of W (column-major), so
    # f = W h = (hᵀ ⊗ I_C) vec(W) and the KFAC precision of vec(W) is V ⊗ U
    # (V: D×D input factor, U: C×C output factor). Its covariance is (V ⊗ U)⁻¹.
    post_cov = torch.linalg.inv(torch.kron(V, U))  # [(D·C), (D·C)], fine for tiny D, C
    fv = post.functional_variance(h)
    for i in range(B):
        J = torch.kron(h[i][None, :], torch.eye(C, dtype=F64))  # [C, D·C] = hᵀ ⊗ I_C
        f_cov = J @ post_cov @ J.T  # [C, C]
        # full matrix: (hᵀV⁻¹h) · U⁻¹
        torch.testing.assert_close(f_cov, fv[i] * torch.linalg.inv(U), rtol=1e-10, atol=1e-12)
        # scalar: Σ_f U = (hᵀV⁻¹h) I, so tr(Σ_f U)/C recovers it densely
        torch.testing.assert_close(torch.trace(f_cov @ U) / C, fv[i], rtol=1e-10, atol=0)
        torch.testing.assert_close(fv[i], h[i] @ torch.linalg.solve(V, h[i]), rtol=1e-10, atol=0)

    # The same posterior in PyTorch's row-major flatten(W) = vec(Wᵀ): precision U ⊗ V and
    # f = (I_C ⊗ hᵀ) flatten(W). A mixed-up ordering would fail this check.
    J_row = torch.kron(torch.eye(C, dtype=F64), h[0][None, :])
    f_cov_row = J_row @ torch.linalg.inv(torch.kron(U, V)) @ J_row.T
    torch.testing.assert_close(f_cov_row, fv[0] * torch.linalg.inv(U), rtol=1e-10, atol=1e-12)


def test_functional_variance_is_clamped():
    post, _ = fitted_posterior()
    fv = post.functional_variance(torch.zeros(2, 3, dtype=F64))
    assert torch.equal(fv, torch.full((2,), 1e-6, dtype=F64))


@pytest.mark.parametrize("shared_noise", [False, True])
def test_sample_moments_converge_to_mean_and_kronecker_covariance(shared_noise: bool):
    D, C, B, S = 3, 3, 2, 200_000
    post, gen = fitted_posterior(D, C)
    h = torch.randn(B, D, generator=gen, dtype=F64)
    f_bar = torch.randn(B, C, generator=gen, dtype=F64)
    samples = post.sample_logits(
        f_bar, h, S, generator=torch.Generator().manual_seed(1), shared_noise=shared_noise
    )
    assert samples.shape == (S, B, C) and samples.dtype == F64

    fv = post.functional_variance(h)
    U_inv = torch.linalg.inv(post.precision_factors()[1])
    for i in range(B):
        cov = fv[i] * U_inv
        x = samples[:, i, :]
        # Mean: the standard error of each entry is sqrt(Σ_jj / S); allow 5 of them.
        se_mean = (cov.diagonal() / S).sqrt()
        assert ((x.mean(0) - f_bar[i]).abs() <= 5 * se_mean).all()
        # Covariance: for Gaussians Var(Σ̂_jk) = (Σ_jj Σ_kk + Σ_jk²) / S; allow 5 SEs.
        emp = torch.cov(x.T)
        se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / S).sqrt()
        assert ((emp - cov).abs() <= 5 * se_cov).all()
        # The target is not isotropic, so a sampler ignoring U would fail above.
        assert (
            cov - cov.diagonal().mean() * torch.eye(C, dtype=F64)
        ).abs().max() > 20 * se_cov.max()


def closed_form_ema(stats: list[torch.Tensor], m: float) -> torch.Tensor:
    """After k updates: m^(k-1)·s_1 + Σ_{i≥2} (1−m)·m^(k−i)·s_i (the first update copies)."""
    k = len(stats)
    out = m ** (k - 1) * stats[0]
    for i in range(2, k + 1):
        out = out + (1 - m) * m ** (k - i) * stats[i - 1]
    return out


@pytest.mark.parametrize("fisher", ["empirical", "ggn"])
def test_ema_updates_equal_closed_form(fisher):
    D, C, m = 3, 4, 0.7
    gen = torch.Generator().manual_seed(3)
    post = LastLayerLaplace(D, C, momentum=m, fisher=fisher, dtype=F64)
    a_stats, g_stats = [], []
    for B in (5, 2, 7, 4):  # unequal batch sizes: each batch is normalised by its own B
        h, p, y = random_batch(gen, B, D, C)
        post.update(h, p, y)
        a = sum(torch.outer(h[i], h[i]) for i in range(B)) / B
        if fisher == "empirical":
            r = [p[i] - torch.nn.functional.one_hot(y[i], C).to(F64) for i in range(B)]
            g = sum(torch.outer(ri, ri) for ri in r) / B
        else:
            g = torch.zeros(C, C, dtype=F64)
            for i in range(B):
                for j in range(C):
                    for k in range(C):
                        g[j, k] += (p[i, j] if j == k else 0.0) - p[i, j] * p[i, k]
            g /= B
        a_stats.append(a)
        g_stats.append(g)
        if len(a_stats) == 1:  # the first update copies
            torch.testing.assert_close(post.A, a, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(post.G, g, rtol=1e-12, atol=1e-14)
    assert post.n_updates == 4
    torch.testing.assert_close(post.A, closed_form_ema(a_stats, m), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(post.G, closed_form_ema(g_stats, m), rtol=1e-12, atol=1e-14)


def test_update_computes_in_posterior_dtype_from_bf16_inputs():
    gen = torch.Generator().manual_seed(4)
    h, p, y = random_batch(gen, 8, 3, 4)
    post = LastLayerLaplace(3, 4, dtype=F64)
    post.update(h.bfloat16(), p.bfloat16(), y)
    assert post.A.dtype == F64 and post.G.dtype == F64
    hb = h.bfloat16().to(F64)  # the bf16 values, accumulated in float64
    torch.testing.assert_close(post.A, hb.T @ hb / 8, rtol=1e-12, atol=1e-14)


def test_map_logits_before_first_update():
    post = LastLayerLaplace(3, 4, dtype=F64)
    f_bar = torch.randn(5, 4, dtype=F64)
    h = torch.randn(5, 3, dtype=F64)
    out = post.sample_logits(f_bar, h, 256)
    assert post.n_updates == 0
    assert out.shape == (1, 5, 4) and torch.equal(out[0], f_bar)
    chunks = list(post.iter_logit_samples(f_bar, h, 256, max_elements=8))
    assert len(chunks) == 1 and torch.equal(chunks[0], out)


def test_iter_logit_samples_chunks_and_matches_one_shot():
    post, gen = fitted_posterior()
    f_bar = torch.randn(5, 4, generator=gen, dtype=F64)
    h = torch.randn(5, 3, generator=gen, dtype=F64)
    chunks = list(post.iter_logit_samples(f_bar, h, 23, max_elements=5 * 4 * 3 + 7))
    assert [c.shape[0] for c in chunks] == [3] * 7 + [2]  # ≤ max_elements each, S in total
    assert all(c.shape[1:] == (5, 4) and c.numel() <= 67 for c in chunks)
    # One chunk with the same seed is exactly sample_logits.
    one = post.sample_logits(f_bar, h, 23, generator=torch.Generator().manual_seed(7))
    (single,) = post.iter_logit_samples(
        f_bar, h, 23, generator=torch.Generator().manual_seed(7), max_elements=10**9
    )
    assert torch.equal(one, single)


def test_cholesky_is_computed_once_per_update(monkeypatch):
    post, gen = fitted_posterior()
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda M: calls.append(1) or real(M))
    f_bar, h = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    for _ in range(3):
        post.sample_logits(f_bar, h, 4)
        post.functional_variance(h)
    assert len(calls) == 2  # V and U, once
    post.update(*random_batch(gen, 6, 3, 4))
    post.sample_logits(f_bar, h, 4)
    assert len(calls) == 4  # invalidated by update


def test_cholesky_jitter_gives_finite_samples():
    D, C = 4, 3
    gen = torch.Generator().manual_seed(5)
    post = LastLayerLaplace(D, C, prior_precision=0.0, n_effective=100.0, dtype=F64)
    h, p, y = random_batch(gen, 6, D, C)
    h[:, -1] = 0.0  # A has a zero row/column: V = √n_e·A is exactly singular
    post.update(h, p, y)
    V, _ = post.precision_factors()
    assert torch.linalg.cholesky_ex(V).info.item() != 0  # the plain factorisation fails
    f_bar = torch.randn(5, C, generator=gen, dtype=F64)
    h_new = torch.randn(5, D, generator=gen, dtype=F64)
    samples = post.sample_logits(f_bar, h_new, 64, generator=gen)
    assert post.cholesky_jitter[0] > 0.0
    assert torch.isfinite(samples).all()
    assert torch.isfinite(post.functional_variance(h_new)).all()


def test_state_dict_round_trip_gives_identical_samples():
    post, gen = fitted_posterior(fisher="ggn")
    f_bar = torch.randn(5, 4, generator=gen, dtype=F64)
    h = torch.randn(5, 3, generator=gen, dtype=F64)
    buf = io.BytesIO()
    torch.save(post.state_dict(), buf)
    buf.seek(0)
    # Different hyperparameters on purpose: the state's replace them.
    clone = LastLayerLaplace(3, 4, prior_precision=1.0, n_effective=1.0, dtype=F64)
    clone.load_state_dict(torch.load(buf))
    assert clone.n_updates == post.n_updates and clone.fisher == "ggn"
    assert torch.equal(clone.A, post.A) and torch.equal(clone.G, post.G)
    s1 = post.sample_logits(f_bar, h, 16, generator=torch.Generator().manual_seed(9))
    s2 = clone.sample_logits(f_bar, h, 16, generator=torch.Generator().manual_seed(9))
    assert torch.equal(s1, s2)
    # A later update of the original does not leak into the loaded copy.
    post.update(*random_batch(gen, 6, 3, 4))
    assert not torch.equal(clone.A, post.A)
    with pytest.raises(ValueError, match="D=3"):
        LastLayerLaplace(2, 4, dtype=F64).load_state_dict(clone.state_dict())


def test_all_reduce_gives_statistics_of_the_union(monkeypatch):
    """Two ranks with batch sizes 3 and 5: both must see the 8-point statistics."""
    D, C = 3, 4
    gen = torch.Generator().manual_seed(6)
    batches = [random_batch(gen, 3, D, C), random_batch(gen, 5, D, C)]
    sent = []

    def fake_all_reduce(tensor, op=None, group=None):
        # Rank r's buffer gets the other rank's buffer added (a 2-rank SUM).
        sent.append(tensor.clone())
        if len(sent) == 2:
            tensor.add_(sent[0])

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    rank1 = LastLayerLaplace(D, C, fisher="empirical", dtype=F64)
    rank1.update(*batches[1], all_reduce=True)  # records its sums
    rank0 = LastLayerLaplace(D, C, fisher="empirical", dtype=F64)
    rank0.update(*batches[0], all_reduce=True)  # receives rank 1's sums

    union = LastLayerLaplace(D, C, fisher="empirical", dtype=F64)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    union.update(*(torch.cat([b0, b1]) for b0, b1 in zip(*batches, strict=True)))
    torch.testing.assert_close(rank0.A, union.A, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rank0.G, union.G, rtol=1e-12, atol=1e-14)
    # A per-rank mean of means (equal rank weights) would differ with B = 3 vs 5.
    assert not torch.allclose(rank1.A, union.A)


def test_all_reduce_with_a_real_single_process_group():
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        gen = torch.Generator().manual_seed(8)
        h, p, y = random_batch(gen, 4, 3, 4)
        a, b = LastLayerLaplace(3, 4, dtype=F64), LastLayerLaplace(3, 4, dtype=F64)
        a.update(h, p, y, all_reduce=True)
        b.update(h, p, y)
        torch.testing.assert_close(a.A, b.A, rtol=1e-14, atol=0)
        torch.testing.assert_close(a.G, b.G, rtol=1e-14, atol=0)
    finally:
        dist.destroy_process_group()


def test_shared_noise_couples_candidates_and_independent_does_not():
    D, C, B, S = 3, 4, 2, 2000
    post, gen = fitted_posterior(D, C)
    h = torch.randn(B, D, generator=gen, dtype=F64)
    f_bar = torch.randn(B, C, generator=gen, dtype=F64)
    std = post.functional_variance(h).sqrt()
    g = torch.Generator().manual_seed(3)
    shared = post.sample_logits(f_bar, h, S, generator=g, shared_noise=True)
    z0 = (shared[:, 0] - f_bar[0]) / std[0]
    z1 = (shared[:, 1] - f_bar[1]) / std[1]
    torch.testing.assert_close(z0, z1)  # the same draws, scaled per candidate
    indep = post.sample_logits(f_bar, h, S, generator=g, shared_noise=False)
    corr = torch.corrcoef(torch.stack([indep[:, 0, 0], indep[:, 1, 0]]))[0, 1]
    assert abs(corr) < 0.1
    chunks = list(post.iter_logit_samples(f_bar, h, S, torch.Generator().manual_seed(3),
                                          max_elements=3 * B * C, shared_noise=True))  # fmt: skip
    assert len(chunks) > 1
    joined = torch.cat(chunks)
    assert joined.shape == (S, B, C)
    torch.testing.assert_close(  # shared within every chunk too
        (joined[:, 0] - f_bar[0]) / std[0], (joined[:, 1] - f_bar[1]) / std[1]
    )
