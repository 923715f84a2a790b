"""Per-index tables: a predictor's log-probabilities for every training point, by global index.

The Bayesian score reads log p_zs(y | x) of each candidate from a :class:`ZeroShotTable`;
RHO-LOSS and irreducible-loss read their IL model's log-probs from one. A table comes from a
zero-shot cache file (``bdsel cache-zeroshot`` or :func:`bdsel.write_zeroshot_cache`), or from
a tensor a user computed::

    table = ZeroShotTable.from_cache("cache/fm-crossfit.h5")        # temperature="auto"
    table = ZeroShotTable(logprobs)                                 # float [N, C], T = 1
    table = ZeroShotTable.calibrated(logprobs, observed_labels)     # T fitted, label noise too

Imports nothing of bdsel's at module level (reading a cache file loads h5py when called).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class ZeroShotTable:
    """log p(c | x_i) for every row i (a global index): float32 [N, C], at ``temperature``.

    The temperature is applied once, here, as ``log_softmax(logprobs / T)``; ``logprobs`` must
    be log-probabilities (each row's logsumexp 0) or logits.
    """

    def __init__(self, logprobs: torch.Tensor, temperature: float = 1.0) -> None:
        if not isinstance(logprobs, torch.Tensor) or logprobs.ndim != 2:
            got = tuple(logprobs.shape) if isinstance(logprobs, torch.Tensor) else type(logprobs)
            raise ValueError(f"logprobs: expected a float tensor [N, C], got {got}")
        if not logprobs.dtype.is_floating_point:
            raise ValueError(f"logprobs: expected a float tensor, got {logprobs.dtype}")
        if not (
            isinstance(temperature, int | float) and temperature > 0 and math.isfinite(temperature)
        ):
            raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
        check_not_probabilities(logprobs, "logprobs")
        self.logprobs = torch.log_softmax(logprobs.float() / temperature, dim=1)
        check_log_probabilities(self.logprobs, "logprobs")
        self.temperature = float(temperature)

    @classmethod
    def _as_given(cls, logprobs: torch.Tensor, temperature: float) -> ZeroShotTable:
        """A table over ``logprobs`` exactly as they are: no copy, no renormalising."""
        table = cls.__new__(cls)
        table.logprobs, table.temperature = logprobs, temperature
        return table

    @property
    def n_rows(self) -> int:
        return int(self.logprobs.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.logprobs.shape[1])

    @property
    def device(self) -> torch.device:
        return self.logprobs.device

    def to(self, device: torch.device | str) -> ZeroShotTable:
        return ZeroShotTable._as_given(self.logprobs.to(device), self.temperature)

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows at ``indices`` (int64 [n], global indices) -> float32 [n, C]. On CPU an index
        outside 0..N-1 is a ValueError naming it (on a GPU the check would sync the host)."""
        check_rows(indices, self.n_rows)
        return self.logprobs[indices]

    def label_logprob(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels | x) of the rows at ``indices`` -> [n]."""
        return self.logprobs[indices, labels]

    def top_class(self, indices: torch.Tensor) -> torch.Tensor:
        """The class each row at ``indices`` finds likeliest -> int64 [n]."""
        return self.logprobs[indices].argmax(1)

    def __repr__(self) -> str:
        return (
            f"ZeroShotTable(n_rows={self.n_rows}, n_classes={self.n_classes}, "
            f"temperature={self.temperature:.3f})"
        )

    @classmethod
    def from_cache(
        cls,
        path: str | Path,
        *,
        temperature: float | str = "auto",
        split: str = "train",
        labels: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> ZeroShotTable:
        """The ``split`` rows of a zero-shot cache file. ``temperature="auto"``: the one
        fitted when the cache was made (the fit with the labels' noise where the cache has one:
        see docs/predictors.md); ``"plain"``: the fit without it; or a number. ``labels`` [N],
        if given, are checked against the labels the cache was made with."""
        from bdsel.cache.format import auto_temperature, load_zs_logprobs, read_cache_info

        if temperature in ("auto", "plain"):
            temperature = auto_temperature(read_cache_info(path), temperature == "auto", path)
        logprobs = load_zs_logprobs(path, None, split=split, labels=labels)
        table = cls(logprobs, float(temperature))
        return table.to(device) if device is not None else table

    @classmethod
    def calibrated(
        cls, logprobs: torch.Tensor, labels: torch.Tensor, *, label_noise: bool = True
    ) -> ZeroShotTable:
        """A table at the temperature that fits ``labels`` [N] best. With ``label_noise`` (the
        labels are observed ones that may be wrong) the fit models symmetric label noise, so
        that the table gives the clean label's probability (bdsel.calibration)."""
        from bdsel.calibration import fit_temperature, fit_temperature_and_noise

        if not isinstance(logprobs, torch.Tensor) or logprobs.ndim != 2:
            raise ValueError("logprobs: expected a float tensor [N, C]")
        n, c = logprobs.shape
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
            raise ValueError(f"labels: expected one label per row of logprobs, [{n}], got {got}")
        if labels.dtype.is_floating_point:
            raise ValueError(f"labels: expected integer class labels, got {labels.dtype}")
        y = labels.long().cpu()
        if n and (int(y.min()) < 0 or int(y.max()) >= c):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise ValueError(f"labels: {bad} is not a class (classes 0..{c - 1})")
        check_not_probabilities(logprobs, "logprobs")
        lp = torch.log_softmax(logprobs.double().cpu(), dim=1)
        check_log_probabilities(lp, "logprobs")
        t = fit_temperature_and_noise(lp, y)[0] if label_noise else fit_temperature(lp, y)
        return cls(logprobs, t)


class LabelColumn:
    """A per-index table as a training run reads it: for each row, the log-prob of its
    observed label and the class the predictor finds likeliest. A run's labels are fixed, so
    this is all its selectors read of a table, in O(N) memory instead of O(N·C) (WebVision's
    2.4M rows and 1,000 classes: 48 MB instead of 9.6 GB)."""

    def __init__(
        self, logprob: torch.Tensor, top: torch.Tensor, labels: torch.Tensor, n_classes: int
    ) -> None:
        if not (logprob.shape == top.shape == labels.shape and logprob.ndim == 1):
            raise ValueError(
                f"logprob, top and labels: expected three [N] tensors, got "
                f"{tuple(logprob.shape)}, {tuple(top.shape)}, {tuple(labels.shape)}"
            )
        self.logprob, self.top, self.labels = logprob, top, labels
        self.n_classes = int(n_classes)

    @classmethod
    def of(cls, logprobs: torch.Tensor, labels: torch.Tensor) -> LabelColumn:
        """The column of ``labels`` [N] in a table's ``logprobs`` [N, C]."""
        labels = labels.long()
        logprob = logprobs.gather(1, labels[:, None]).squeeze(1)
        return cls(logprob, logprobs.argmax(1), labels, logprobs.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.logprob.shape[0])

    @property
    def device(self) -> torch.device:
        return self.logprob.device

    def to(self, device: torch.device | str) -> LabelColumn:
        moved = (t.to(device) for t in (self.logprob, self.top, self.labels))
        return LabelColumn(*moved, self.n_classes)

    def __len__(self) -> int:
        return self.n_rows

    def label_logprob(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels | x) of the rows at ``indices`` -> [n]; ``labels`` must be the
        observed ones the column holds (checked on CPU; on a GPU the check would sync)."""
        if labels.device.type == "cpu" and not torch.equal(self.labels[indices], labels.long()):
            raise ValueError(
                "labels: not the observed labels this table was read for (a LabelColumn "
                "holds one label per row; use a ZeroShotTable for any label)"
            )
        return self.logprob[indices]

    def top_class(self, indices: torch.Tensor) -> torch.Tensor:
        """The class each row at ``indices`` finds likeliest -> int64 [n]."""
        return self.top[indices]

    def __repr__(self) -> str:
        return f"LabelColumn(n_rows={self.n_rows}, n_classes={self.n_classes})"


def check_rows(indices: torch.Tensor, n_rows: int) -> None:
    """On CPU, a ValueError naming the first of ``indices`` outside a table of ``n_rows`` rows
    (0..n_rows-1); on a GPU nothing (the check would sync the host, and indexing fails anyway)."""
    if indices.device.type == "cpu" and indices.numel():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n_rows:
            raise ValueError(
                f"indices: {low if low < 0 else high} is outside the table of {n_rows} rows "
                f"(global indices 0..{n_rows - 1})"
            )


def check_not_probabilities(values: torch.Tensor, name: str) -> None:
    """A ValueError for a table of probabilities (every entry in [0, 1], rows summing to 1)
    where log-probabilities or logits are expected."""
    if not (values.numel() and values.dtype.is_floating_point and bool((values >= 0).all())):
        return
    if torch.allclose(values.double().sum(1), values.new_ones(values.shape[0]).double()):
        raise ValueError(
            f"{name}: every row is a probability distribution; pass log-probabilities "
            "(their .log()) or logits"
        )


def check_log_probabilities(logprobs: torch.Tensor, name: str) -> None:
    """A ValueError naming the rows of ``logprobs`` [N, C] that are not log-probabilities:
    NaN, +inf, or a logsumexp other than 0 (a row of -inf in every class included), within
    the rounding of the tensor's dtype."""
    if not logprobs.numel():
        return
    atol = 1e-3 if logprobs.dtype in (torch.float32, torch.float64) else 0.05
    lse = torch.logsumexp(logprobs.double(), dim=1)
    bad = (lse - 0.0).abs().gt(atol) | ~torch.isfinite(lse) | torch.isnan(logprobs).any(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"{name}: {rows.numel()} of {logprobs.shape[0]} rows are not log-probabilities "
            f"(NaN, +inf, or a logsumexp other than 0; the first is row {int(rows[0])}, "
            f"logsumexp {float(lse[rows[0]]):.4g}); normalise them with "
            "torch.log_softmax, or pass logits to ZeroShotTable"
        )


def as_lookup(value: ZeroShotTable | LabelColumn | torch.Tensor, name: str):
    """A selector's per-index table argument as it reads it: a LabelColumn (what ``bdsel
    train`` passes) as it is, anything else through :func:`as_table`."""
    return value if isinstance(value, LabelColumn) else as_table(value, name)


def as_table(value: ZeroShotTable | torch.Tensor, name: str) -> ZeroShotTable:
    """A selector's per-index table argument: a ZeroShotTable, or log-probs [N, C] as they are
    (checked to be log-probabilities)."""
    if isinstance(value, ZeroShotTable):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim != 2 or not value.dtype.is_floating_point:
            got = f"{value.dtype} {tuple(value.shape)}"
            raise ValueError(f"{name}: expected float log-probs [N, C], got {got}")
        check_log_probabilities(value, name)
        return ZeroShotTable._as_given(value, 1.0)
    raise ValueError(
        f"{name}: expected a ZeroShotTable or a tensor [N, C], got {type(value).__name__}"
    )
