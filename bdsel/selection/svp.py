"""Selection via proxy (SVP; Coleman et al., ICLR 2020), as RHO-LOSS runs it as a baseline.

Before the first step (``prepare``) a small proxy model (``select.model``) is trained for
``select.epochs`` on the train subset with the observed labels, then every train point is
scored by ``select.criterion`` and the top ``select.fraction`` kept as a one-shot
coreset:

    entropy           highest predictive entropy of the proxy
    least_confidence  lowest max-probability of the proxy
    forgetting        most forgetting events during the proxy's training (Toneva et al. 2019)

The target model then trains on the coreset: each epoch is the coreset in random order, and
each step picks n_b of the n_B candidates uniformly. The coreset is checkpointed, so a
resumed run does not retrain the proxy. During ``select.warmup_epochs`` the epochs run over
the whole train subset, as ``uniform`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from bdsel.config import Config, checks
from bdsel.data import ImageSource, RunData
from bdsel.distributed import broadcast_from_main
from bdsel.evaluation import predict_logprobs
from bdsel.fit import fit_supervised
from bdsel.models import Classifier, create_model
from bdsel.optim import build_optimizer
from bdsel.runtime import stream_generator
from bdsel.selection.base import Candidates, ForwardOutputs, Selection
from bdsel.selection.registry import register_selector
from bdsel.selection.simple import WarmupSelector

# The proxy's random streams are the training loop's under another seed; ties get their own.
SVP_SEED_OFFSET, SVP_TIES = 104_729, 10


@dataclass
class SvpSettings:
    """``select.*`` when select.method=svp: the proxy model and its coreset."""

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("model",)  # registered model names (bdsel.names)
    model: str = "small_cnn"  # the proxy model
    epochs: int = 5  # the proxy's training epochs
    lr: float = 1e-3  # the proxy's learning rate
    batch_size: int = 128  # the proxy's batch size
    fraction: float = 0.1  # coreset size, a fraction of the train subset
    # how the proxy ranks points
    criterion: Literal["entropy", "least_confidence", "forgetting"] = "entropy"
    RANGES: ClassVar[dict[str, checks.Range]] = {
        "fraction": (checks.within(0, 1, low_open=True), "a fraction in (0, 1]"),
        "epochs": checks.POSITIVE_INT_RULE,
        "lr": checks.POSITIVE_FLOAT_RULE,
        "batch_size": checks.POSITIVE_INT_RULE,
    }  # fmt: skip


def forgetting_events(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events per point from a correctness history bool [T, n] -> int64 [n].

    An event is a correct -> incorrect transition between consecutive records. A point never
    classified correctly gets T, above the ⌊T/2⌋ any learned point can reach: as in Toneva et
    al., unlearned points count as forgotten the most.
    """
    events = (correct[:-1] & ~correct[1:]).sum(0)
    return torch.where(correct.any(0), events, torch.full_like(events, correct.shape[0]))


def uncertainty(probs: torch.Tensor, criterion: str) -> torch.Tensor:
    """Higher = more uncertain, from predicted probabilities [n, C] -> [n]."""
    if criterion == "entropy":
        return -torch.special.xlogy(probs, probs).sum(1)
    if criterion == "least_confidence":
        return 1.0 - probs.max(1).values
    raise ValueError(f"select.criterion: no uncertainty score {criterion!r}")


def top_k_random_ties(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Positions of the ``k`` largest scores [n], ties broken at random (not by position, which
    would favour low global indices when many forgetting counts are equal)."""
    perm = torch.randperm(scores.shape[0], device=scores.device, generator=generator)
    order = torch.sort(scores[perm], descending=True, stable=True).indices
    return perm[order[:k]]


def tile_order(coreset: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Fresh random permutations of ``coreset`` [k], concatenated and cut to ``length``."""
    k = coreset.shape[0]
    reps = -(-length // k)
    perms = torch.rand((reps, k), device=coreset.device, generator=generator).argsort(dim=1)
    return coreset[perms.reshape(-1)[:length]]


def train_proxy(
    config: Config, data: RunData, source: ImageSource, device: torch.device
) -> tuple[Classifier, torch.Tensor]:
    """Train the proxy on the train subset's observed labels: augmented batches, AdamW at
    ``select.lr`` with ``train.weight_decay``, no schedule.

    Returns the proxy and whether each train point [n_train] was classified correctly when it
    was presented in each epoch, bool [epochs, n_train] (forgetting events are counted on it).
    """
    svp, ds = config.select.settings, data.dataset
    with torch.random.fork_rng(devices=[]):  # a fixed proxy init that leaves the run's RNG alone
        torch.random.default_generator.manual_seed(config.seed)
        proxy = create_model(svp.model, n_classes=ds.n_classes, in_channels=ds.in_channels)
    proxy = proxy.to(device)
    optimizer = build_optimizer(
        proxy, dataclasses.replace(config.train, optimizer="adamw", lr=svp.lr)
    )
    train_idx, labels = data.train_idx.to(device), data.observed.to(device)
    n = train_idx.shape[0]
    position = torch.full_like(labels, -1)
    position[train_idx] = torch.arange(n, device=device)
    history = torch.zeros((svp.epochs, n), dtype=torch.bool, device=device)

    def record(epoch: int, idx: torch.Tensor, logits: torch.Tensor) -> None:
        history[epoch, position[idx]] = logits.argmax(1) == labels[idx]

    proxy = fit_supervised(
        proxy,
        source,
        train_idx,
        labels,
        epochs=svp.epochs,
        batch_size=svp.batch_size,
        optimizer=optimizer,
        seed=config.seed + SVP_SEED_OFFSET,
        ema_decay=config.train.ema_decay,
        on_batch=record,
    )
    return proxy, history


def build_coreset(
    config: Config, data: RunData, source: ImageSource, device: torch.device
) -> torch.Tensor:
    """Train the proxy, score the train subset, keep the top fraction: int64 [k] global indices
    (ascending, on the CPU), k = round(fraction · n_train), at least 1."""
    svp = config.select.settings
    proxy, history = train_proxy(config, data, source, device)
    train_idx = data.train_idx.to(device)
    if svp.criterion == "forgetting":
        scores = forgetting_events(history).float()
    else:
        probs = predict_logprobs(proxy, source, "train", train_idx, svp.batch_size).exp()
        scores = uncertainty(probs, svp.criterion)
    k = max(1, round(svp.fraction * train_idx.shape[0]))
    g = stream_generator(config.seed, 0, SVP_TIES, device)
    return train_idx[top_k_random_ties(scores, k, g)].sort().values.cpu()


@register_selector("svp")
class SVP(WarmupSelector):
    """Trains on a one-shot coreset, picking n_b of n_B at random from it.

    Its proxy phase comes first, outside the step: pass the coreset itself (``coreset``, int64
    global indices), or ``build_coreset``, a callable that :meth:`prepare` calls once to make
    it (``bdsel train`` passes one that trains the proxy, :func:`build_coreset`). The coreset
    is in the state dict, so a resumed run does not rebuild it.
    """

    Settings = SvpSettings  # the proxy's, for build_coreset

    def __init__(
        self,
        n_selected: int,
        *,
        coreset: torch.Tensor | None = None,
        build_coreset: Callable[[], torch.Tensor] | None = None,
        warmup_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(n_selected, warmup_epochs=warmup_epochs, seed=seed)
        self.coreset = None if coreset is None else coreset.long().cpu()  # [k] global indices
        self.build_coreset = build_coreset

    def prepare(self) -> None:
        if self.coreset is not None:  # given, or restored from a checkpoint: no proxy training
            return
        if self.build_coreset is None:
            raise ValueError(
                "svp: pass coreset= (the global indices to train on) or build_coreset="
            )
        # Under torchrun every rank must cut its slice from the same coreset order; a proxy
        # trained on a GPU need not come out bit-identical on every rank.
        self.coreset = broadcast_from_main(self.build_coreset())

    def epoch_order(self, train_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.uniform_epoch:
            return super().epoch_order(train_idx, generator)
        if self.coreset is None:
            raise RuntimeError("svp: prepare() must build the coreset before the first epoch")
        # The coreset is tiled to the train subset's length, so an SVP epoch takes as many
        # gradient steps as every other method's and "epochs to a target" stay comparable.
        # A point may then appear twice in one candidate batch, where two permutations meet.
        return tile_order(self.coreset.to(train_idx.device), len(train_idx), generator)

    def pick(
        self, candidates: Candidates, outputs: ForwardOutputs | None, generator: torch.Generator
    ) -> Selection:
        return self.uniform.pick(candidates, outputs, generator)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return state if self.coreset is None else {**state, "coreset": self.coreset.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.coreset = state.get("coreset")
