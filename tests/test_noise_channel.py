"""The label-noise channel: its anchor-point estimate and the forward loss correction, in
float64 against brute-force references."""

import pytest
import torch
import torch.nn.functional as F

from bdsel.data.noise_channel import (
    CONCENTRATED,
    MIN_ENTRY,
    anchor_transition,
    choose_channel,
    forward_loss,
    identifiable,
    off_diagonal_concentration,
    symmetric_channel,
)


def _channel(c: int) -> torch.Tensor:
    """A known asymmetric channel: 25% of class i to i + 1, 5% to i + 2, the rest kept."""
    t = torch.zeros(c, c, dtype=torch.float64)
    for i in range(c):
        t[i, i], t[i, (i + 1) % c], t[i, (i + 2) % c] = 0.70, 0.25, 0.05
    return t


def test_anchor_points_recover_a_known_channel():
    g = torch.Generator().manual_seed(0)
    c, n = 5, 4000
    clean = torch.distributions.Dirichlet(torch.full((c,), 0.3)).sample((n,)).double()
    # Sure points of every class, 4% of the rows each: the 97th percentile of q_i falls on them.
    anchors = torch.eye(c, dtype=torch.float64).repeat(200, 1)
    clean = torch.cat([clean, anchors])[torch.randperm(n + 200 * c, generator=g)]
    t = _channel(c)
    estimate = anchor_transition(clean @ t)
    assert estimate.dtype == torch.float64
    torch.testing.assert_close(estimate, t, atol=1e-12, rtol=0)
    torch.testing.assert_close(estimate.sum(1), torch.ones(c, dtype=torch.float64))


def _pairflip(c: int, rate: float) -> torch.Tensor:
    t = torch.eye(c, dtype=torch.float64) * (1 - rate)
    for i in range(c):
        t[i, (i + 1) % c] = rate
    return t


def test_off_diagonal_concentration_by_brute_force():
    t = _channel(5)  # off-diagonal 0.25 and 0.05 per row
    torch.testing.assert_close(
        off_diagonal_concentration(t), torch.full((5,), 0.25 / 0.30, dtype=torch.float64)
    )
    spread = off_diagonal_concentration(symmetric_channel(0.4, 10))
    torch.testing.assert_close(spread, torch.full((10,), 1 / 9, dtype=torch.float64))
    # A row with no off-diagonal mass (no noise in that class) counts as spread, not NaN.
    assert off_diagonal_concentration(torch.eye(3)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_the_channel_choice_recovers_a_known_channel_from_anchor_points(kind: str):
    # Synthetic out-of-fold probabilities of a model that also confuses classes 0 and 1 (a
    # clean-posterior mix, as T-shirt and shirt): the anchor points of class 0 carry that
    # confusion on top of the noise. The choice projects it away at symmetric noise and keeps
    # the estimated matrix at a pair flip.
    g = torch.Generator().manual_seed(1)
    c, n = 6, 3000
    clean = torch.distributions.Dirichlet(torch.full((c,), 0.3)).sample((n,)).double()
    confused = torch.eye(c, dtype=torch.float64)
    confused[0, :2] = torch.tensor([0.8, 0.2], dtype=torch.float64)  # class 0's surest: 80%
    anchors = confused.repeat(150, 1)
    clean = torch.cat([clean, anchors])[torch.randperm(n + 150 * c, generator=g)]
    truth = symmetric_channel(0.4, c) if kind == "symmetric" else _pairflip(c, 0.3)
    anchor = anchor_transition(clean @ truth)
    chosen, channel = choose_channel(anchor)
    assert chosen == ("symmetric" if kind == "symmetric" else "anchor")
    given_kind, given = choose_channel(anchor, rate=0.37)  # a rate estimated some other way
    assert given_kind == chosen
    if kind == "symmetric":  # the rate is the anchor matrix's, the confusion spread out
        rate = float(1 - anchor.diagonal().mean())
        torch.testing.assert_close(channel, symmetric_channel(rate, c), atol=1e-12, rtol=0)
        torch.testing.assert_close(given, symmetric_channel(0.37, c), atol=1e-12, rtol=0)
        assert abs(rate - 0.4) < 0.03  # 0.4 + class 0's share of the confusion
        assert float(off_diagonal_concentration(anchor).mean()) < CONCENTRATED
    else:  # the anchor matrix itself: the pair flip, class 0's row with the confusion mixed in
        assert torch.equal(channel, anchor) and torch.equal(given, anchor)  # the rate unused
        torch.testing.assert_close(channel[1:], truth[1:], atol=1e-12, rtol=0)
        torch.testing.assert_close(channel[0], confused[0] @ truth, atol=1e-12, rtol=0)


def test_the_outlier_filter_passes_over_points_above_the_quantile():
    # One over-sure point per class (q_i = 1, a row of the identity) above the anchors: the
    # plain argmax would take it for the channel's row, the 97th percentile does not.
    c = 4
    t = _channel(c)
    clean = torch.eye(c, dtype=torch.float64).repeat(50, 1)
    q = torch.cat([clean @ t, torch.eye(c, dtype=torch.float64)])
    torch.testing.assert_close(anchor_transition(q), t, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        anchor_transition(q, quantile=1.0), torch.eye(c, dtype=torch.float64)
    )


def test_forward_loss_is_the_observed_labels_nll_through_the_channel():
    g = torch.Generator().manual_seed(1)
    c = 6
    t = _channel(c)
    logits = torch.randn(32, c, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (32,), generator=g)
    floored = t.clamp_min(MIN_ENTRY)  # the channel's zeros get the floor that keeps log T finite
    floored = floored / floored.sum(1, keepdim=True)
    brute = torch.stack([
        -torch.log(sum(torch.softmax(logits[b], 0)[i] * floored[i, labels[b]] for i in range(c)))
        for b in range(32)
    ]).mean()  # fmt: skip
    got = forward_loss(t)(logits, labels)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, brute, atol=1e-12, rtol=0)
    # Through the identity channel it is the plain cross-entropy.
    identity = forward_loss(torch.eye(c, dtype=torch.float64))(logits, labels)
    torch.testing.assert_close(identity, F.cross_entropy(logits, labels), atol=1e-5, rtol=0)


def test_forward_loss_is_least_at_the_clean_posterior():
    # For a point of clean class 0 whose observed label is drawn through the channel, the
    # expected forward loss is least when softmax(logits) puts everything on class 0, and the
    # plain cross-entropy is not (it is least at the noisy posterior, row 0 of the channel).
    c = 4
    t = _channel(c)
    labels = torch.arange(c)
    weights = t[0]  # P(observed = j | clean = 0)

    def expected(loss, logits):
        per = torch.stack([loss(logits[None], labels[j : j + 1]) for j in range(c)])
        return float((weights * per).sum())

    sure = torch.tensor([20.0, 0, 0, 0], dtype=torch.float64)
    noisy = t[0].clamp_min(1e-12).log()
    assert expected(forward_loss(t), sure) < expected(forward_loss(t), noisy)
    assert expected(F.cross_entropy, noisy) < expected(F.cross_entropy, sure)


@pytest.mark.parametrize(
    "matrix, expected",
    [(_channel(4), True), (torch.tensor([[0.4, 0.6], [0.1, 0.9]]), False), (torch.eye(3), True)],
)
def test_a_channel_is_identifiable_when_its_diagonal_dominates(matrix, expected):
    assert identifiable(matrix) is expected


def test_anchor_transition_rejects_no_rows():
    with pytest.raises(ValueError, match="probabilities"):
        anchor_transition(torch.zeros(0, 3))
