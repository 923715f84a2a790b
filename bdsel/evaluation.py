"""What a run evaluates and how: accuracy and log-probabilities on a split, a weight EMA,
batch-norm statistics, and the metrics of a record.

The authors evaluate an exponential moving average of the weights (their training script
wraps the model in ``ema_pytorch.EMA``); bdsel keeps one with timm's ``ModelEmaV3`` (timm
already comes with open_clip): parameters and BN buffers averaged with foreach ops, a
decay warm-up computed on the host from the step count, so an update never syncs the host.

Batch-norm running statistics of a selecting run come from the selected batches only, a
biased sample (hard, clean-looking points). Before each evaluation they are re-estimated on
a fixed, uniformly drawn sample of ``BN_SAMPLES`` points of the training subset, on a copy
of the evaluated model, so evaluation never changes what training sees (docs/evaluation.md
measured the choice).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from bdsel.config import Config
from bdsel.data import RunData
from bdsel.data.batching import ImageSource
from bdsel.forward import autocast_for, tracked_batchnorms
from bdsel.rundir import metric_prefix
from bdsel.runtime import stream_generator

# ----------------------------------------------------------------------------- predictions


def evaluate(
    model: nn.Module,
    source: ImageSource,
    labels: torch.Tensor,
    batch_size: int,
    split: str = "test",
    rows: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on ``rows`` of ``split`` (default: all of it).

    ``labels`` are the rows' clean labels, aligned with ``rows``. One host sync at the end.
    """
    n = labels.shape[0]
    if rows is None:
        rows = torch.arange(n, device=source.device)
    logprobs = predict_logprobs(model, source, split, rows, batch_size)
    labels = labels.to(source.device)
    correct = (logprobs.argmax(1) == labels).sum()
    loss = -logprobs[torch.arange(n, device=source.device), labels].sum()
    return float(correct) / n, float(loss) / n


@torch.no_grad()
def predict_logprobs(
    model: nn.Module, source: ImageSource, split: str, rows: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Eval-mode log-softmax of ``model`` on ``rows`` of ``split``: float32 [len(rows), C]."""
    was_training = model.training
    model.eval()
    autocast = autocast_for(source.device)
    out = []
    for _, x in source.iter_batches(split, rows.to(source.device), batch_size):
        with autocast():
            logits, _ = model(x)
        out.append(torch.log_softmax(logits.float(), dim=1))
    model.train(was_training)
    return torch.cat(out)


# ----------------------------------------------------------------------------- weight EMA

# The decay warm-up of timm's ModelEmaV3 and ema_pytorch with their defaults (inv_gamma 1,
# power 2/3): decay_t = min(ema_decay, 1 - (1 + t)^(-2/3)) at the t-th update after the
# first, which copies the weights. It passes 0.99 at step 1000 and 0.998 at step 11180.
EMA_WARMUP_POWER = 2.0 / 3.0


class WeightEMA:
    """An exponential moving average of a model's weights and BN buffers.

    ``update(model)`` after every optimizer step; ``module`` is the averaged model (kept in
    eval mode). The update count lives on the host, so the decay is a Python float.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils.model_ema import ModelEmaV3  # late: timm's import takes seconds

        self._ema = ModelEmaV3(
            model,
            decay=decay,
            use_warmup=True,
            warmup_gamma=1.0,
            warmup_power=EMA_WARMUP_POWER,
        )
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self._ema.update(model, step=self.updates)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def make_ema(model: nn.Module, decay: float) -> WeightEMA | None:
    """A WeightEMA of ``model``, or None when ``decay`` is 0 (EMA off)."""
    return WeightEMA(model, decay) if decay > 0 else None


# ----------------------------------------------------------------------------- batch norm


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterator[torch.Tensor] | list[torch.Tensor]
) -> int:
    """Set every BN layer's running mean and (unbiased) variance to those of its inputs
    over all of ``batches``; returns the number of layers recalibrated.

    The forward runs in train mode, as in training (each BN normalises with its batch's
    statistics). Hooks take each batch's per-channel mean and variance and pool them in
    float64 (Chan et al.'s parallel update), so the result is the statistic of the whole
    sample, not an average of per-batch variances (torch's ``update_bn`` misses the spread
    between batch means).
    """
    bns = tracked_batchnorms(model)
    if not bns:
        return 0
    # per layer: [count, mean, sum of squared deviations], the last two float64 [C]
    pooled: dict[nn.Module, list[Any]] = {m: [0, 0.0, 0.0] for m in bns}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach()
        # [rows, channels]: a view for channels-last inputs (a copy otherwise). Two passes
        # (mean, then mean squared deviation) over its rows: about 3x faster on CPU than
        # var_mean over the strided non-channel axes, and as accurate.
        rows = x.movedim(1, -1).reshape(-1, x.shape[1])
        mean_b = rows.mean(0)
        var_b = (rows - mean_b).square().mean(0)
        n_b = rows.shape[0]
        acc = pooled[module]
        n_a, mean_a, m2_a = acc
        n = n_a + n_b
        delta = mean_b.double() - mean_a
        acc[0] = n
        acc[1] = mean_a + delta * (n_b / n)
        acc[2] = m2_a + var_b.double() * n_b + delta * delta * (n_a * n_b / n)

    handles = [m.register_forward_pre_hook(hook) for m in bns]
    was_training = model.training
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for m in bns:
        n, mean, m2 = pooled[m]
        if n == 0:
            continue
        var = m2 / max(n - 1, 1)  # unbiased, as BatchNorm keeps it
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return len(bns)


# ----------------------------------------------------------------------------- evaluation

# Stream id of the BN recalibration sample (after bdsel.runtime's PERMUTATION, AUGMENTATION, SELECTION).
BN_SAMPLE = 3
# Training points the evaluated model's BN statistics are re-estimated on before each
# evaluation (all of a smaller training subset).
BN_SAMPLES = 6400


class Evaluator:
    """The metrics of one evaluation: which weights (``Config.evaluated_weights``: the EMA
    where train.ema_decay keeps one, else the online ones), which BN statistics
    (re-estimated on ``BN_SAMPLES`` training points where the model has batch norm),
    on which split (``Config.eval_split``: the test set, or data.validation_fraction's).

    A record holds ``<split>_acc``/``<split>_loss`` of the evaluated model, and its accuracy
    again under its name (``<split>_acc_ema`` or ``<split>_acc_online``).
    """

    def __init__(self, config: Config, data: RunData, source: ImageSource) -> None:
        self.config, self.source = config, source
        self.prefix = metric_prefix(config.eval_split)  # test_acc / val_acc
        device = source.device
        if config.eval_split == "test":
            self.split, self.rows = "test", None
            self.labels = data.dataset.test.labels
        else:
            self.split, self.rows = "train", data.validation_idx.to(device)
            self.labels = data.clean[data.validation_idx]
        # One fixed, uniform sample of the training subset for the whole run.
        g = stream_generator(config.seed, 0, BN_SAMPLE, device)
        train_idx = data.train_idx.to(device)
        n = min(BN_SAMPLES, len(train_idx))
        pick = torch.randperm(len(train_idx), device=device, generator=g)[:n]
        self.bn_rows = train_idx[pick]

    def with_bn(self, model: nn.Module) -> nn.Module:
        """``model`` with its BN statistics re-estimated, on a copy (a model without batch norm
        as it is)."""
        if not tracked_batchnorms(model):
            return model
        model = copy.deepcopy(model)
        bs = self.config.eval.batch_size
        batches = (x for _, x in self.source.iter_batches("train", self.bn_rows, bs))
        recalibrate_batchnorm(model, batches)
        return model

    def accuracy(self, model: nn.Module) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on the evaluation split."""
        prepared = self.with_bn(model)
        bs = self.config.eval.batch_size
        return evaluate(prepared, self.source, self.labels, bs, split=self.split, rows=self.rows)

    def __call__(self, online: nn.Module, ema: WeightEMA | None) -> dict[str, float]:
        p, evaluated = self.prefix, self.config.evaluated_weights
        model = online if evaluated == "online" else ema.module if ema is not None else None
        if model is None:
            raise ValueError("train.ema_decay > 0, but the run keeps no weight EMA")
        acc, loss = self.accuracy(model)
        return {f"{p}_acc": acc, f"{p}_loss": loss, f"{p}_acc_{evaluated}": acc}
