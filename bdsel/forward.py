"""What selection needs from any model's forward pass: the last layer's input (``features``)
and logits, and a no-grad scoring forward that leaves batch-norm's running statistics alone.

    hook = LastLayerHook(model)          # finds the final nn.Linear (or name it: layer="fc")
    with scoring(model):                 # no grad, BN on batch statistics, bf16 autocast
        logits = model(candidates)
    features = hook.features             # [n, D], the input of that layer in this forward

torchvision and timm classifiers work as they are; nothing of torch is patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")


def find_last_linear(model: nn.Module) -> str:
    """The name of ``model``'s final ``nn.Linear`` (the last one registered, which is the
    classifier head of torchvision's and timm's classifiers: ``fc``, ``head.fc``,
    ``classifier``...). ValueError when there is none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer: pass layer= the name of the module "
            "whose input is the features and whose output is the logits"
        )
    return names[-1]


class LastLayerHook:
    """Captures the input (features [n, D]) and output (logits [n, C]) of one layer of
    ``model`` on every forward pass: the final ``nn.Linear`` by default, or the module named
    ``layer`` (a dotted name from ``model.named_modules()``).

    ``features`` and ``logits`` hold the last forward's tensors (not detached: in a training
    forward they carry gradients). ``remove()`` takes the hook off again.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        modules = dict(model.named_modules())
        self.layer_name = layer if layer is not None else find_last_linear(model)
        if self.layer_name not in modules:
            raise ValueError(
                f"layer={self.layer_name!r}: {type(model).__name__} has no such module; "
                f"its nn.Linear layers: {', '.join(_linear_names(model)) or 'none'}"
            )
        self.layer = modules[self.layer_name]
        self.features: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self._handle = self.layer.register_forward_hook(self._capture)

    @property
    def n_features(self) -> int:
        """D, the layer's input width (``in_features`` of an nn.Linear)."""
        if isinstance(self.layer, nn.Linear):
            return self.layer.in_features
        raise AttributeError(
            f"{self.layer_name} is not an nn.Linear: run a forward and read features"
        )

    @property
    def n_classes(self) -> int:
        if isinstance(self.layer, nn.Linear):
            return self.layer.out_features
        raise AttributeError(
            f"the layer {self.layer_name!r} is not an nn.Linear: run a forward and read logits"
        )

    def _capture(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        (x,) = args[:1]
        self.features = x.flatten(1) if x.ndim > 2 else x
        self.logits = output

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of the last forward; RuntimeError when none ran since the hook
        was made."""
        if self.features is None or self.logits is None:
            raise RuntimeError(
                f"LastLayerHook: no forward pass through the layer {self.layer_name!r} yet; call "
                "the model first"
            )
        return self.logits, self.features

    def remove(self) -> None:
        self._handle.remove()


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def autocast_for(
    device: torch.device, precision: str = "auto"
) -> Callable[[], contextlib.AbstractContextManager]:
    """An autocast factory: ``auto`` is bf16 on CUDA and full precision elsewhere.

    ``bf16`` forces bf16 autocast on any device (the candidate forward uses it on CPU too: it
    keeps the top-32 of 320 ranking, see docs on speed), ``fp32`` forces full precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA, or a CPU oneDNN runs bf16 on (AVX-512
    BF16 or AMX). Elsewhere bf16 convolutions are emulated, and much slower than fp32
    (docs/speed.md)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def candidate_precision(device: torch.device, precision: str = "auto") -> str:
    """The candidate forward's precision on ``device``: ``auto`` (a run's) is ``bf16`` where
    the device computes it natively (``native_bf16``: CUDA, a CPU with AVX-512 BF16 or AMX),
    where it keeps the top-n_b ranking at a lower cost, and ``fp32`` elsewhere (emulated bf16
    is slower, docs/speed.md); ``bf16`` and ``fp32`` (a benchmark's) stand."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def candidate_autocast(
    device: torch.device, precision: str = "auto"
) -> Callable[[], contextlib.AbstractContextManager]:
    """The candidate forward's autocast, at ``candidate_precision(device, precision)``."""
    return autocast_for(device, candidate_precision(device, precision))


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of ``model``."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def tracked_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in batchnorms(model) if m.track_running_stats]


@contextlib.contextmanager
def batchnorm_batch_stats(model: nn.Module) -> Iterator[None]:
    """Batch-norm on the current batch's statistics without touching the running ones.

    With ``track_running_stats`` off in train mode, BatchNorm normalises with batch statistics
    and neither reads nor updates its running buffers.
    """
    bns = tracked_batchnorms(model)
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@contextlib.contextmanager
def scoring(model: nn.Module, precision: str = "auto", bn: str = "batch") -> Iterator[None]:
    """The candidate forward's context: no gradients, the autocast ``precision`` (``auto`` =
    bf16 where the device computes it natively, see ``native_bf16``; ``bf16``; ``fp32``), and
    batch-norm as ``bn`` says: ``batch``
    (batch statistics, running statistics untouched: the paper's choice), ``eval`` (running
    statistics, eval mode) or ``train`` (as the model is, running statistics updated)."""
    if bn not in ("batch", "eval", "train"):
        raise ValueError(f"bn={bn!r}: expected batch, eval or train")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    bn_ctx = batchnorm_batch_stats(model) if bn == "batch" else contextlib.nullcontext()
    if bn == "eval":
        model.eval()
    try:
        with torch.no_grad(), bn_ctx, candidate_autocast(device, precision)():
            yield
    finally:
        model.train(was_training)
