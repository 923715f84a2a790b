"""Last-layer KFAC Laplace posterior, updated online from the selected points.

Model f(x) = W h(x) + b with W ∈ R^{C×D}. The posterior over W is N(W_MAP, (V ⊗ U)⁻¹)
with Kronecker factors (the paper's last-layer KFAC Laplace approximation; README, top)

    V = √n_e · A + √τ0 · I_D        U = √n_e · G + √τ0 · I_C

where A and G are exponential moving averages of the batch statistics
a = (1/B) Σ h hᵀ and g = (1/B) Σ (p − y)(p − y)ᵀ (empirical Fisher) or
g = (1/B) Σ (diag(p) − p pᵀ) (GGN). For a candidate with features h and MAP logits f̄
the logits are distributed as f ~ N(f̄, (hᵀV⁻¹h) · U⁻¹); nothing of size D×D inverse or
(D·C)×(D·C) is ever formed.

Host syncs: `update`, `functional_variance`, `sample_logits` and `iter_logit_samples`
queue device work only, except that the first use after an update factorises V and U
and reads back the two Cholesky `info` codes (one host sync per update, needed to
decide whether to retry with jitter). The factors are then cached until the next
`update` or `load_state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

FISHER_KINDS = ("empirical", "ggn")

# Variance floor for hᵀV⁻¹h: keeps sqrt() away from 0 and rounding from going negative.
MIN_FUNCTIONAL_VARIANCE = 1e-6
_CHOLESKY_RETRIES = 6


class LastLayerLaplace:
    """KFAC Laplace posterior over the last linear layer, with EMA Kronecker factors.

    Args:
        n_features: D, the width of the penultimate features h.
        n_classes: C, the number of classes (logits).
        prior_precision: τ0 (the factors get √τ0 · I).
        n_effective: n_e, the "number of effective data" (the factors get √n_e · A, √n_e · G).
        momentum: m of the EMA A ← m·A + (1−m)·a; the first update copies.
        fisher: "empirical" ((p−y)(p−y)ᵀ) or "ggn" (diag(p) − ppᵀ).
        device, dtype: where and in which precision the factors live and all math runs.
        max_sample_elements: largest S·B·C chunk `iter_logit_samples` yields.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        prior_precision: float = 10.0,
        n_effective: float = 200.0,
        momentum: float = 0.99,
        fisher: str = "empirical",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        max_sample_elements: int = 2**26,
    ) -> None:
        if n_features < 1 or n_classes < 1:
            raise ValueError(f"need n_features, n_classes >= 1, got {n_features}, {n_classes}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating type, got {dtype}")
        if max_sample_elements < 1:
            raise ValueError(f"max_sample_elements must be >= 1, got {max_sample_elements}")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.max_sample_elements = int(max_sample_elements)
        self._set_hyperparameters(prior_precision, n_effective, momentum, fisher)
        self.A = torch.zeros(n_features, n_features, device=self.device, dtype=dtype)
        self.G = torch.zeros(n_classes, n_classes, device=self.device, dtype=dtype)
        self.n_updates = 0
        # Jitter added to (V, U) by the last factorisation; 0.0 when none was needed.
        self.cholesky_jitter: tuple[float, float] = (0.0, 0.0)
        self._cholesky: tuple[Tensor, Tensor] | None = None

    def _set_hyperparameters(
        self, prior_precision: float, n_effective: float, momentum: float, fisher: str
    ) -> None:
        if fisher not in FISHER_KINDS:
            raise ValueError(f"fisher must be one of {FISHER_KINDS}, got {fisher!r}")
        if prior_precision < 0 or n_effective < 0:
            raise ValueError(
                f"prior_precision and n_effective must be >= 0, got {prior_precision}, {n_effective}"
            )
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.prior_precision = float(prior_precision)
        self.n_effective = float(n_effective)
        self.momentum = float(momentum)
        self.fisher = fisher

    def __repr__(self) -> str:
        return (
            f"LastLayerLaplace(n_features={self.n_features}, n_classes={self.n_classes}, "
            f"prior_precision={self.prior_precision}, n_effective={self.n_effective}, "
            f"momentum={self.momentum}, fisher={self.fisher!r}, n_updates={self.n_updates})"
        )

    # ------------------------------------------------------------------ statistics

    def update(
        self,
        features: Tensor,
        probs: Tensor,
        labels: Tensor,
        *,
        all_reduce: bool = False,
    ) -> None:
        """EMA-update A and G from one batch of selected points.

        Args:
            features: [B, D] penultimate features h (any float dtype, e.g. bf16).
            probs: [B, C] softmax of the logits.
            labels: [B] integer (observed) labels.
            all_reduce: if torch.distributed is initialised, all-reduce the batch sums and
                counts over the default group, so every rank gets the statistics of the union
                of the ranks' batches (a rank may then contribute B = 0). Without an
                initialised process group it is ignored (a single process is its own union).
        """
        B = features.shape[0]
        self._check_batch(features, probs, labels)
        distributed = all_reduce and dist.is_available() and dist.is_initialized()
        if B == 0 and not distributed:
            raise ValueError("update needs at least one point")
        a_sum, g_sum = self._batch_sums(features, probs, labels)
        if distributed:
            a, g = self._all_reduced_means(a_sum, g_sum, B)
        else:
            a = a_sum / B
            g = g_sum / B

        if self.n_updates == 0:
            self.A, self.G = a, g
        else:
            # Out of place, so tensors handed out by state_dict() are never mutated.
            m = self.momentum
            self.A = self.A.mul(m).add_(a, alpha=1.0 - m)
            self.G = self.G.mul(m).add_(g, alpha=1.0 - m)
        self.n_updates += 1
        self._cholesky = None

    def _check_batch(self, features: Tensor, probs: Tensor, labels: Tensor) -> None:
        B = features.shape[0]
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features must be [B, {self.n_features}], got {tuple(features.shape)}"
            )
        if probs.shape != (B, self.n_classes):
            raise ValueError(f"probs must be [{B}, {self.n_classes}], got {tuple(probs.shape)}")
        if labels.shape != (B,):
            raise ValueError(f"labels must be [{B}], got {tuple(labels.shape)}")

    def _batch_sums(self, features: Tensor, probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Σ h hᵀ [D, D] and Σ of the Fisher's outer products [C, C] over the batch."""
        # Always accumulate in the posterior's dtype: autocast hands us bf16.
        h = features.detach().to(device=self.device, dtype=self.dtype)
        p = probs.detach().to(device=self.device, dtype=self.dtype)
        # A point with a NaN or inf feature or probability adds nothing: one such point must
        # not poison A or G for every later step (masked on the device: no host sync).
        finite = (torch.isfinite(h).all(1) & torch.isfinite(p).all(1))[:, None]
        h, p = torch.where(finite, h, 0.0), torch.where(finite, p, 0.0)
        a_sum = h.T @ h
        if self.fisher == "empirical":
            # scatter instead of F.one_hot: one_hot checks label ranges with a host sync.
            y = torch.zeros_like(p).scatter_(1, labels.to(self.device, torch.int64)[:, None], 1.0)
            r = torch.where(finite, p - y, 0.0)
            return a_sum, r.T @ r
        return a_sum, torch.diag(p.sum(0)) - p.T @ p

    def _all_reduced_means(self, a_sum: Tensor, g_sum: Tensor, B: int) -> tuple[Tensor, Tensor]:
        """The batch means over every rank's points: one collective for everything; the
        count rides along so ranks with different batch sizes are weighted per point."""
        D, C = self.n_features, self.n_classes
        count = torch.full((1,), float(B), device=self.device, dtype=self.dtype)
        buf = torch.cat([a_sum.reshape(-1), g_sum.reshape(-1), count])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        # clamp: an all-empty union would otherwise give NaN (checking it would sync).
        total = buf[-1].clamp_min(1.0)
        a = buf[: D * D].reshape(D, D) / total
        g = buf[D * D : D * D + C * C].reshape(C, C) / total
        return a, g

    def precision_factors(self) -> tuple[Tensor, Tensor]:
        """(V [D,D], U [C,C]) with V = √n_e·A + √τ0·I_D and U = √n_e·G + √τ0·I_C."""
        sqrt_ne, sqrt_tau = math.sqrt(self.n_effective), math.sqrt(self.prior_precision)
        V = sqrt_ne * self.A + sqrt_tau * torch.eye(
            self.n_features, device=self.device, dtype=self.dtype
        )
        U = sqrt_ne * self.G + sqrt_tau * torch.eye(
            self.n_classes, device=self.device, dtype=self.dtype
        )
        return V, U

    def cholesky_factors(self) -> tuple[Tensor, Tensor]:
        """Lower Cholesky factors (L_V [D,D], L_U [C,C]) of V and U, cached per update.

        Computing them syncs the host once (the `info` codes); if a factor is not
        numerically positive definite, jitter 1e-6·mean(diag), ×10 per retry, is added.
        """
        if self._cholesky is None:
            V, U = self.precision_factors()
            L_V, info_V = torch.linalg.cholesky_ex(V)
            L_U, info_U = torch.linalg.cholesky_ex(U)
            # The only host sync of the posterior: both codes read back together.
            bad_V, bad_U = (torch.stack([info_V, info_U]) != 0).tolist()
            jitter_V = jitter_U = 0.0
            if bad_V:
                L_V, jitter_V = _cholesky_with_jitter(V, "V")
            if bad_U:
                L_U, jitter_U = _cholesky_with_jitter(U, "U")
            self.cholesky_jitter = (jitter_V, jitter_U)
            self._cholesky = (L_V, L_U)
        return self._cholesky

    # ------------------------------------------------------------------ predictive

    def functional_variance(self, features: Tensor) -> Tensor:
        """hᵀV⁻¹h for each row of features [B, D] -> [B], clamped >= 1e-6.

        Computed as ‖L_V⁻¹ h‖² by one triangular solve (no inverse is formed).
        """
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features must be [B, {self.n_features}], got {tuple(features.shape)}"
            )
        h = features.detach().to(device=self.device, dtype=self.dtype)
        L_V, _ = self.cholesky_factors()
        z = torch.linalg.solve_triangular(L_V, h.T, upper=False)  # [D, B]
        return z.square().sum(0).clamp_min(MIN_FUNCTIONAL_VARIANCE)

    def sample_logits(
        self,
        logits: Tensor,
        features: Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        shared_noise: bool = False,
    ) -> Tensor:
        """Samples f_s = f̄ + sqrt(hᵀV⁻¹h) · L_U⁻ᵀ ε, ε ~ N(0, I_C).

        Args:
            logits: [B, C] MAP logits f̄.
            features: [B, D] features h.
            n_samples: S.
            generator: for torch.randn on the posterior's device.
            shared_noise: draw S noise vectors L_U⁻ᵀ ε_s once and scale them per candidate
                (common random numbers). Each candidate's samples have exactly the same
                distribution N(f̄, (hᵀV⁻¹h) U⁻¹); only the draws of different candidates are
                coupled, which makes their scores' Monte Carlo errors move together (a
                fairer ranking). Costs S·C² + S·B·C instead of S·B·C² (C = 1000: ~B× less).
        Returns:
            [S, B, C] in the posterior's dtype; [1, B, C] = logits before the first update
            (MAP, no variance: with no statistics yet there is no posterior to sample).
        """
        f_bar = self._check_logits(logits, features, n_samples)
        if self.n_updates == 0:
            return f_bar[None]
        std = self.functional_variance(features).sqrt()
        return self._sample_chunk(f_bar, std, n_samples, generator, shared_noise)

    def iter_logit_samples(
        self,
        logits: Tensor,
        features: Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        max_elements: int | None = None,
        shared_noise: bool = False,
    ) -> Iterator[Tensor]:
        """Like `sample_logits`, but yields [s_chunk, B, C] pieces totalling S samples.

        Each piece has at most `max_elements` (default `max_sample_elements`) elements,
        but at least one sample. All pieces draw from the same generator; feed them to
        `bdsel.selection.bayesian_score.StreamingScore` to score large-C batches.
        Before the first update it yields the MAP logits [1, B, C] once.
        """
        f_bar = self._check_logits(logits, features, n_samples)
        max_elements = self.max_sample_elements if max_elements is None else int(max_elements)
        if max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {max_elements}")
        if self.n_updates == 0:
            return iter((f_bar[None],))
        # Variance and factors are computed once, not per chunk.
        std = self.functional_variance(features).sqrt()
        B, C = f_bar.shape
        chunk = max(1, max_elements // max(1, B * C))

        def pieces() -> Iterator[Tensor]:
            for start in range(0, n_samples, chunk):
                n = min(chunk, n_samples - start)
                yield self._sample_chunk(f_bar, std, n, generator, shared_noise)

        return pieces()

    def _check_logits(self, logits: Tensor, features: Tensor, n_samples: int) -> Tensor:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if logits.ndim != 2 or logits.shape[1] != self.n_classes:
            raise ValueError(f"logits must be [B, {self.n_classes}], got {tuple(logits.shape)}")
        if features.shape != (logits.shape[0], self.n_features):
            raise ValueError(
                f"features must be [{logits.shape[0]}, {self.n_features}], "
                f"got {tuple(features.shape)}"
            )
        return logits.detach().to(device=self.device, dtype=self.dtype)

    def _sample_chunk(
        self,
        f_bar: Tensor,
        std: Tensor,
        n: int,
        generator: torch.Generator | None,
        shared_noise: bool = False,
    ) -> Tensor:
        B, C = f_bar.shape
        _, L_U = self.cholesky_factors()
        rows = n if shared_noise else n * B
        eps = torch.randn(rows, C, generator=generator, device=self.device, dtype=self.dtype)
        # Columns of L_Uᵀ Z = εᵀ are L_U⁻ᵀ ε, with Cov = (L_U L_Uᵀ)⁻¹ = U⁻¹. Solving on the
        # transposed views keeps the result row-major [n·B, C], so the softmax over C that
        # follows reads contiguous memory (left=False would return it column-major).
        noise = torch.linalg.solve_triangular(L_U.mT, eps.mT, upper=True).mT
        if shared_noise:  # [n, C] -> [n, B, C], scaled per candidate
            return noise[:, None, :] * std[None, :, None] + f_bar
        return noise.reshape(n, B, C).mul_(std[:, None]).add_(f_bar)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """A, G, n_updates and the hyperparameters (the tensors are not copied)."""
        return {
            "A": self.A,
            "G": self.G,
            "n_updates": self.n_updates,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "prior_precision": self.prior_precision,
            "n_effective": self.n_effective,
            "momentum": self.momentum,
            "fisher": self.fisher,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; its hyperparameters replace this object's."""
        if (state["n_features"], state["n_classes"]) != (self.n_features, self.n_classes):
            raise ValueError(
                f"state is for D={state['n_features']}, C={state['n_classes']}, "
                f"this posterior has D={self.n_features}, C={self.n_classes}"
            )
        self._set_hyperparameters(
            state["prior_precision"], state["n_effective"], state["momentum"], state["fisher"]
        )
        self.A = state["A"].to(device=self.device, dtype=self.dtype, copy=True)
        self.G = state["G"].to(device=self.device, dtype=self.dtype, copy=True)
        self.n_updates = int(state["n_updates"])
        self.cholesky_jitter = (0.0, 0.0)
        self._cholesky = None


def _cholesky_with_jitter(M: Tensor, name: str) -> tuple[Tensor, float]:
    """Cholesky of M + jitter·I, jitter = 1e-6·mean(diag M) growing ×10 per retry."""
    scale = float(M.diagonal().mean())  # host sync, but only on this failure path
    if not math.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    eye = torch.eye(M.shape[0], device=M.device, dtype=M.dtype)
    jitter = 1e-6 * scale
    for _ in range(_CHOLESKY_RETRIES):
        L, info = torch.linalg.cholesky_ex(M + jitter * eye)
        if int(info) == 0:
            return L, jitter
        jitter *= 10.0
    raise torch.linalg.LinAlgError(
        f"Cholesky of {name} failed even with jitter {jitter / 10.0:.3g}; "
        "the factor is probably not finite"
    )
