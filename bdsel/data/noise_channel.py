"""The label-noise channel without clean labels: its anchor-point estimate and the forward
loss correction that trains a model for the clean label through it (Patrini et al., "Making
deep neural networks robust to label noise: a loss correction approach", CVPR 2017).

The channel is the row-stochastic matrix T[i, j] = P(observed label j | clean label i). A model
trained on observed labels estimates q(x) = P(observed | x) = P(clean | x) T. An anchor point
of class i is an x whose clean class is surely i, so q(x) there is row i of T: the estimate
takes, for each class, the training point whose q_i sits at the ``quantile`` of q_i (the
paper's 97th percentile, which passes over the few points a model is over-sure of).

The forward correction trains a model f for the clean label by the loss of the observed one
through T, −log (softmax(f) T)_y: its softmax then estimates P(clean | x), and a mislabeled
point's observed label gets what a model trained on clean labels would give it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The least entry of a channel the forward loss uses: log T stays finite where T has zeros.
MIN_ENTRY = 1e-6


def anchor_transition(probs: torch.Tensor, quantile: float = 0.97) -> torch.Tensor:
    """The channel's anchor-point estimate from ``probs`` [N, C], each row P(observed | x) of a
    model that never trained on that row -> float64 [C, C], rows summing to 1."""
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"anchor_transition needs probabilities [N, C], got {tuple(probs.shape)}")
    p = probs.double()
    rows = []
    for i in range(p.shape[1]):
        q = p[:, i]
        at = torch.quantile(q, quantile, interpolation="higher")
        below = torch.where(q <= at, q, torch.full_like(q, -1.0))  # the paper's outlier filter
        rows.append(p[int(below.argmax())])
    t = torch.stack(rows)
    return t / t.sum(1, keepdim=True)


def symmetric_channel(eps: float, n_classes: int) -> torch.Tensor:
    """The symmetric channel of rate ``eps``: float64 [C, C], 1 − ε on the diagonal and
    ε/(C − 1) everywhere else (a label changed to any other class alike)."""
    t = torch.full((n_classes, n_classes), eps / (n_classes - 1), dtype=torch.float64)
    return t.fill_diagonal_(1 - eps)


# The mean share of a row's off-diagonal mass on its largest entry above which a channel is
# taken as concentrated (a pair flip) rather than spread (symmetric: 1/(C − 1) per entry); the
# offline default's anchor matrices fall far on either side of it
# (docs/results/holdout_free/crossfit_recipe.md).
CONCENTRATED = 0.5


def off_diagonal_concentration(transition: torch.Tensor) -> torch.Tensor:
    """Per row, the share of its off-diagonal mass on its largest off-diagonal entry: float64
    [C], from 1/(C − 1) (spread evenly) to 1 (all on one class); 0 for a row without any."""
    off = transition.double().clone().fill_diagonal_(0)
    total = off.sum(1)
    return torch.where(total > 0, off.max(1).values / total.clamp_min(1e-300), 0.0)


def choose_channel(anchor: torch.Tensor, rate: float | None = None) -> tuple[str, torch.Tensor]:
    """The channel a forward correction trains through, from an anchor-point estimate [C, C]:
    ("anchor", it) where its rows are concentrated (mean off_diagonal_concentration at least
    CONCENTRATED), else ("symmetric", the symmetric channel of ``rate``, by default the anchor
    matrix's 1 − mean diagonal), whose off-diagonal is then mostly the model's own confusions,
    not the labels' noise."""
    t = anchor.double()
    if t.shape[0] <= 2 or float(off_diagonal_concentration(t).mean()) >= CONCENTRATED:
        return "anchor", t
    eps = float(1 - t.diagonal().mean()) if rate is None else rate
    return "symmetric", symmetric_channel(eps, t.shape[0])


def identifiable(transition: torch.Tensor) -> bool:
    """Whether every clean class is still the most likely observed label of its own row (the
    channel's diagonal dominates): only then is the clean label recoverable through it."""
    t = transition.double()
    off = t - torch.diag(torch.full((t.shape[0],), float("inf"), dtype=t.dtype))
    return bool((t.diagonal() > off.max(1).values).all())


def forward_loss(transition: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The forward-corrected cross-entropy: ``loss(logits, labels)`` = mean of
    −log (softmax(logits) T)[label], in log space (logsumexp over the clean class)."""
    t = transition.double().clamp_min(MIN_ENTRY)
    log_t = (t / t.sum(1, keepdim=True)).log()

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        log_clean = torch.log_softmax(logits.to(dtype), dim=1)  # [B, C] over the clean class
        lt = log_t.to(logits.device, dtype)
        log_observed = torch.logsumexp(log_clean[:, :, None] + lt[None], dim=1)  # [B, C]
        return -log_observed.gather(1, labels[:, None]).mean()

    return loss
