"""The selector contract: what a training loop hands a selection method and gets back.

A selector sees the candidate batch (global indices, observed labels), the candidate
forward outputs (logits, last-layer features) when it reads them, and per-index tables it
was built with (e.g. zero-shot log-probs, by global index). It returns the chosen positions,
optional per-point loss weights and a few 0-d tensors to log. Nothing here may sync the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bdsel.config import Config
from bdsel.contracts import Candidates, ForwardOutputs, Selection
from bdsel.table import check_rows


@dataclass
class SelectorContext:
    """What a ``bdsel train`` run offers a selector when it is built from the run's config
    (:func:`bdsel.selection.configured.selector_from_config` maps it onto the method's
    settings)."""

    config: Config
    n_classes: int
    n_features: int
    device: torch.device
    lookups: dict[str, Any] = field(default_factory=dict)  # name -> a per-index table
    extras: dict[str, Any] = field(default_factory=dict)  # run resources a method may need


class Selector:
    """A selection method: from a candidate batch, the positions to train on.

    In a training loop, per step::

        selection = selector.select(indices, labels, logits=..., features=...)
        ...train on the points at selection.positions (weighted by selection.weights)...
        selector.observe(indices[pos], labels[pos], logits=..., features=...)

    ``indices`` int64 [n] are the candidates' global indices (rows of any per-index table the
    method reads), ``labels`` int64 [n] their observed labels, ``logits`` [n, C] and
    ``features`` [n, D] (the input of the model's last linear layer) the candidate forward's
    outputs, needed when :meth:`wants_forward` says so. Call :meth:`set_epoch` at every
    epoch's start (the warm-up counts epochs; InfoBatch anneals by them).

    Subclasses register with ``@register_selector(name)``, take their settings as keyword
    arguments (those a config sets: fields of ``Settings``, a dataclass beside the class whose
    fields ``select.<key>`` sets when ``select.method`` names it), and implement :meth:`pick` (and :meth:`_observe` when they learn from the
    trained points). In an epoch where a method reads no candidate forward, ``bdsel train``
    may make all of the epoch's choices before its first step (on folder data, so that only
    the chosen images are decoded): such a choice must not depend on what :meth:`observe`
    learns within the same epoch. Nothing here syncs the host except the index check on CPU tensors.
    """

    name: ClassVar[str] = ""
    needs_forward: ClassVar[bool] = False  # select() reads logits and features
    requires: ClassVar[tuple[str, ...]] = ()  # per-index tables (bdsel train's lookups)
    Settings: ClassVar[type | None] = None  # its select.* settings (bdsel.configure)

    def __init__(self, n_selected: int, *, seed: int = 0) -> None:
        if not isinstance(n_selected, int) or isinstance(n_selected, bool) or n_selected < 1:
            raise ValueError(f"n_selected: expected a positive int, got {n_selected!r}")
        self.n_selected = n_selected
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.n_rows: int | None = None  # rows of the per-index tables the method reads
        self.n_classes: int | None = None  # classes of those tables
        # On CPU, NaN or inf logits or features are a ValueError. bdsel train turns this off:
        # its loop tells a diverging model by the loss and names the step it turned.
        self.check_finite = True

    # -- the public interface

    def select(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        inputs: torch.Tensor | None = None,
    ) -> Selection:
        """Choose from one candidate batch: a :class:`Selection` of positions into it (int64
        [n_selected]; ``full`` returns all n), optional loss weights [n_selected] and 0-d
        scalars to log. ``generator`` drives any randomness (default: the selector's own,
        seeded with ``seed``); ``inputs`` are passed through for methods that want them."""
        n = self._check_batch(indices, labels, logits, features)
        if n < self.n_selected:
            raise ValueError(f"indices: {n} candidates, fewer than n_selected={self.n_selected}")
        outputs = None
        if logits is not None and features is not None:  # bf16 from an autocast forward: fp32
            outputs = ForwardOutputs(logits.float(), features.float())
        elif self.wants_forward():
            missing = "logits" if logits is None else "features"
            raise ValueError(
                f"{missing}: select.method={self.name} scores the candidates with the model's "
                "logits and last-layer features (the candidate forward); pass both"
            )
        candidates = Candidates(indices, inputs, labels)
        return self.pick(candidates, outputs, generator or self._generator(indices.device))

    def observe(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        """After the optimizer step: the trained points' indices [m], observed labels [m], and
        their training forward's logits [m, C] and features [m, D] (detached or not: they are
        detached here). Methods with a posterior (bayesian) update it; under
        ``torch.distributed`` the update is all-reduced over the ranks."""
        n = self._check_batch(indices, labels, logits, features)
        if logits is None or features is None:
            raise ValueError("observe needs the trained points' logits and features")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if n == 0 and not distributed:  # under torchrun a rank may have trained on none
            raise ValueError("indices: observe needs the points just trained on, got none")
        self._observe(indices, labels, logits.detach().float(), features.detach().float())

    def wants_forward(self) -> bool:
        """Whether this step's selection reads the candidate forward (``needs_forward``, unless
        the method is picking without it, e.g. in a uniform epoch)."""
        return self.needs_forward

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based)."""

    def prepare(self) -> None:
        """Called once before the first step (and again on resume): one-off work such as
        building SVP's coreset."""

    def epoch_order(self, train_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The global indices this epoch's candidate batches are cut from, in order.

        Default: a fresh permutation of the train subset. A method that trains on a subset
        (SVP's coreset) returns its own order; the loop cuts ``len(result) // n_B`` batches.
        """
        perm = torch.randperm(len(train_idx), device=train_idx.device, generator=generator)
        return train_idx[perm]

    def state_dict(self) -> dict[str, Any]:
        """Everything a new selector needs to go on exactly as this one: the method's state
        (subclasses add theirs) and the random stream ``select`` draws from when it is given
        no ``generator``, per device."""
        return {"generators": {str(d): g.get_state() for d, g in self._generators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for device, rng in state.get("generators", {}).items():
            self._generator(torch.device(device)).set_state(rng)

    # -- for subclasses

    def pick(
        self,
        candidates: Candidates,
        outputs: ForwardOutputs | None,
        generator: torch.Generator,
    ) -> Selection:
        """The method's choice from checked candidates (``outputs`` None when no candidate
        forward ran)."""
        raise NotImplementedError

    def _observe(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        """What the method learns from the trained points (nothing by default)."""

    @classmethod
    def keeps_scores(cls) -> bool:
        """Whether the method remembers its candidates' scores (overrides last_scores)."""
        return cls.last_scores is not Selector.last_scores

    def last_scores(self, indices: torch.Tensor) -> torch.Tensor | None:
        """Each candidate's score at its last visit, float [n] (higher: the more worth
        training on; +inf where never scored), for ``select.rescore``; None while there is
        no full round of scores to go by (before and during the first selecting epoch) or
        the method is not selecting."""
        return None

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _check_batch(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor | None,
        features: torch.Tensor | None,
    ) -> int:
        """The batch size n, after checking every argument's shape (and, on CPU, that the
        indices are rows of the method's tables); ValueError naming the argument."""
        _need(
            isinstance(indices, torch.Tensor) and indices.ndim == 1, "indices", "int64 [n]", indices
        )
        _need(not indices.dtype.is_floating_point, "indices", "integer global indices", indices)
        n = indices.shape[0]
        _need(
            isinstance(labels, torch.Tensor) and labels.shape == (n,)
            and not labels.dtype.is_floating_point,
            "labels", f"int64 [{n}] (one observed label per index)", labels,
        )  # fmt: skip
        if logits is not None:
            _need(logits.ndim == 2 and logits.shape[0] == n, "logits", f"[{n}, C]", logits)
        if features is not None:
            _need(features.ndim == 2 and features.shape[0] == n, "features", f"[{n}, D]", features)
        if self.n_rows is not None:
            check_rows(indices, self.n_rows)
        n_classes = self.n_classes
        if n_classes is None and logits is not None:
            n_classes = logits.shape[1]
        if labels.device.type == "cpu":  # on a GPU these checks would sync the host
            check_labels(labels, n_classes)
            for name, value in (("logits", logits), ("features", features)):
                if value is not None and self.check_finite:
                    check_finite(value, name)
        return n


def check_labels(labels: torch.Tensor, n_classes: int | None) -> None:
    """A ValueError naming the first label outside 0..n_classes-1 (negative ones always)."""
    if not labels.numel():
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (n_classes is not None and high >= n_classes):
        bad = low if low < 0 else high
        classes = "" if n_classes is None else f" (classes 0..{n_classes - 1})"
        raise ValueError(f"labels: {bad} is not a class{classes}")


def check_finite(value: torch.Tensor, name: str) -> None:
    """A ValueError naming how many rows of ``value`` hold NaN or inf, and the first."""
    if not value.numel():
        return
    bad = ~torch.isfinite(value).reshape(value.shape[0], -1).all(1)
    if bad.any():
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"{name}: {rows.numel()} of {value.shape[0]} rows hold NaN or inf (the first at "
            f"position {int(rows[0])})"
        )


def _need(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        got = (
            f"{value.dtype} {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise ValueError(f"{name}: expected {expected}, got {got}")


def shortlist(candidates: Candidates, last_scores: torch.Tensor, keep: int) -> Candidates:
    """The ``keep`` candidates whose scores at their last visit were the highest, as a
    smaller candidate batch: those the candidate forward need not score again this step are
    the ones last seen far below the n_b picked (a mislabeled point, a learned one). Fixed
    shapes, no host sync."""
    return candidates.take(top_k_positions(last_scores, keep))


def top_k_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest scores, int64 [k] (ties in no guaranteed order); a NaN
    score ranks last (topk would rank it first)."""
    scores = torch.nan_to_num(scores, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
    return torch.topk(scores, k, largest=True, sorted=False).indices
