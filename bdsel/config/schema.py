"""The run configuration's settings: one dataclass per section, each setting's type and
default on its field and its allowed range in the class's ``RANGES`` beside them.

``data``, ``train``, ``select`` and ``zeroshot`` are owned (``OWNED``): beside their own keys
they hold the settings of the dataset, the learning-rate schedule, the method and the
predictor they name, whose ``Settings`` dataclass lives next to that class or loader
(``bdsel.selection.bayesian.BayesianSettings``, ...) and lands in the section's ``settings``
field; ``bdsel.configure.load_config`` finds it through the registries. Names of registered
things are checked against their registries by ``bdsel.names.check_names``: this
package imports nothing from bdsel, so every other module can import it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from bdsel.config.checks import (
    DEVICE,
    NON_NEGATIVE,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    Range,
    at_least,
    is_device,
    positive,
    within,
)


@dataclass
class NoiseConfig:
    # symmetric: a chosen point gets another class uniformly; pairflip: class c -> c+1;
    # uniform: RHO-LOSS's noise, a uniformly random label that may equal the true one.
    kind: Literal["none", "symmetric", "pairflip", "uniform"] = "none"
    rate: float = 0.0  # share of the train subset's labels made wrong
    RANGES: ClassVar[dict[str, Range]] = {
        "rate": (within(0, 1), "a fraction in [0, 1]"),
    }  # fmt: skip


@dataclass
class ImbalanceConfig:
    # Exponential long tail: class c keeps n_max * ratio ** (-c / (C - 1)) points; 1 = balanced.
    ratio: float = 1.0
    RANGES: ClassVar[dict[str, Range]] = {
        "ratio": (at_least(1), "a max/min class-size ratio >= 1"),
    }  # fmt: skip


@dataclass
class CleanConfig:
    # Clean-then-train: a crossfit or probe cache (out-of-fold probabilities of models that
    # never saw each row) whose flagged label issues (cleanlab's find_label_issues, its default
    # filter_by) are dropped from the train subset before any method trains. null: no cleaning.
    cache: str | None = None


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # a registered dataset (bdsel.data.list_datasets)
    root: str | None = None  # None: the dataset's documented default location
    train_fraction: float = 0.5  # of the base training set (paper: 0.5)
    # A clean-labelled split for tuning, drawn from the end of the split's permutation
    # (disjoint from the train subset, the holdout predictor's hold-out and the test set); > 0:
    # accuracy is measured on it instead of the test set, and records say val_acc.
    validation_fraction: float = 0.0
    split_seed: int | None = None  # None: the run's seed
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    augment: bool = True  # random crops and flips where the dataset has them
    # The dataset's own settings (data.name's ``Settings``, beside its loader), set as
    # data.<key> beside the keys above.
    settings: Any = None
    RANGES: ClassVar[dict[str, Range]] = {
        "split_seed": (lambda v: v is None or v >= 0, "null or an int >= 0"),
        "train_fraction": (within(0, 1, low_open=True), "a fraction in (0, 1]"),
        "validation_fraction": (within(0, 1, high_open=True), "a fraction in [0, 1)"),
    }  # fmt: skip


@dataclass
class ModelConfig:
    name: str = "small_cnn"  # a registered model (bdsel.models.list_models)
    weights: str | None = None  # local state-dict file for the backbone (vit_b16)


@dataclass
class TrainConfig:
    epochs: int = 20  # at most; train.budget_s may stop it sooner
    optimizer: Literal["adamw", "sgd"] = "adamw"  # AdamW (paper) or SGD with momentum 0.9
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled (adamw) or L2 (sgd)
    schedule: Literal["none", "cosine", "step"] = "none"  # learning-rate schedule over the epochs
    # torch.compile of the model for the training step and the candidate forward. auto: on
    # CUDA only; on CPU it did not pay (docs/results/speed/).
    compile: bool | Literal["auto"] = "auto"
    # Exponential moving average of the weights (and BN buffers), updated after every
    # optimizer step with a decay warm-up (bdsel.evaluation); evaluations measure it. 0: no
    # EMA, and evaluations measure the online weights.
    ema_decay: float = 0.998
    # A time budget in seconds end to end: the predictor's (what the caches the run reads cost
    # to make, recorded in them) plus training's (selection included, evaluation excluded).
    # The run stops at the step that spends it (under torchrun at that epoch's end), or after
    # ``epochs``, and is evaluated there.
    # Methods then compare at equal seconds, not equal epochs. null: no budget.
    budget_s: float | None = None
    # The schedule's own settings (train.schedule's, bdsel.optim.SCHEDULE_SETTINGS), set as
    # train.<key> beside the keys above.
    settings: Any = None
    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": (at_least(1), POSITIVE_INT),
        "budget_s": (lambda v: v is None or v > 0, "null or a positive number of seconds"),
        "lr": (positive, POSITIVE_FLOAT),
        "weight_decay": (at_least(0), NON_NEGATIVE),
        "ema_decay": (within(0, 1, high_open=True), "a decay in [0, 1) (0: no EMA)"),
    }  # fmt: skip


@dataclass
class SelectConfig:
    method: str = "uniform"  # a registered selector (bdsel.list_selectors)
    n_candidates: int = 320  # n_B
    n_selected: int = 32  # n_b
    warmup_epochs: int = 0  # uniform picks before selection starts
    # Forward (and score) only this fraction of the candidates each step: those whose score
    # at their last visit was highest; every candidate in the first selecting epoch (1: off).
    rescore: float = 1.0
    # The method's own settings (select.method's ``Settings`` class, beside it; none for a
    # method without any), set as select.<key> beside the keys above.
    settings: Any = None
    RANGES: ClassVar[dict[str, Range]] = {
        "n_candidates": (at_least(1), POSITIVE_INT),
        "n_selected": (at_least(1), POSITIVE_INT),
        "warmup_epochs": (at_least(0), "an int >= 0"),
        "rescore": (within(0, 1, low_open=True), "a fraction in (0, 1]"),
    }  # fmt: skip


@dataclass
class ZeroshotConfig:
    # a registered predictor (bdsel.predictors.list_predictors); probe: no clean label, seconds
    predictor: str = "probe"
    cache: str | None = (
        None  # None: cache/<stem>-<settings hash>.h5 (the predictor declares the stem)
    )
    # Applied at read time, log_softmax(logprobs / T). auto: the T fitted when the cache was
    # made, by the least NLL of labels the predictor never trained on (bdsel.calibration);
    # where it calibrates on observed labels (probe, crossfit, clip), the T fitted together
    # with their noise rate, so that p_zs is the probability of the clean label, not of the
    # observed one (which gives every mislabeled point about ε/(K − 1)). plain: the T fitted to
    # the calibration labels as they are (docs/predictors.md). A number: that T.
    temperature: float | Literal["auto", "plain"] = "auto"
    # The predictor's own settings (zeroshot.predictor's ``Settings`` class, beside it), set
    # as zeroshot.<key> beside the keys above.
    settings: Any = None
    RANGES: ClassVar[dict[str, Range]] = {
        "temperature": (lambda v: v in ("auto", "plain") or v > 0, "auto, plain or a positive float"),
    }  # fmt: skip


@dataclass
class EvalConfig:
    every: int = 1  # epochs
    # Inference batch size: evaluation's, and the predictor's (its predictions, the probe's
    # features); a predictor that trains has its own training batch size.
    batch_size: int = 1000
    RANGES: ClassVar[dict[str, Range]] = {
        "every": (at_least(1), POSITIVE_INT),
        "batch_size": (at_least(1), POSITIVE_INT),
    }  # fmt: skip


@dataclass
class ReportConfig:
    # test accuracies for epochs and seconds to target
    targets: list[float] = field(default_factory=lambda: [0.8])
    RANGES: ClassVar[dict[str, Range]] = {
        "targets": (lambda v: all(0.0 < x <= 1.0 for x in v), "accuracies in (0, 1]"),
    }  # fmt: skip


@dataclass
class Config:
    seed: int = 0  # model init, candidate order, augmentation, selection
    device: str = "auto"  # training's and the predictor's; auto: cuda when available, else cpu
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    zeroshot: ZeroshotConfig = field(default_factory=ZeroshotConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    RANGES: ClassVar[dict[str, Range]] = {
        "seed": (at_least(0), "an int >= 0 (it also seeds the split unless data.split_seed)"),
        "device": (is_device, DEVICE),
    }  # fmt: skip

    @property
    def eval_split(self) -> Literal["test", "validation"]:
        """Where accuracy is measured: the validation split where data.validation_fraction
        makes one (a tuning run), else the test set."""
        return "validation" if self.data.validation_fraction > 0 else "test"

    @property
    def holdout_fraction(self) -> float:
        """The clean hold-out split's share of the base training set, drawn after the train
        subset: the one a predictor's settings name (the holdout predictor's
        ``zeroshot.holdout_fraction``; null there: all that the train subset leaves), 0 for a
        predictor that reads no hold-out."""
        own = getattr(self.zeroshot.settings, "holdout_fraction", 0.0)
        return 1.0 - self.data.train_fraction if own is None else own

    @property
    def evaluated_weights(self) -> Literal["ema", "online"]:
        """Which weights an evaluation measures: the weight EMA where train.ema_decay keeps
        one, else the online ones."""
        return "ema" if self.train.ema_decay > 0 else "online"

    def to_dict(self) -> dict[str, Any]:
        """The settings as config.yaml holds them: an owned section's own settings flat
        beside its keys (``select.alpha``, not ``select.settings.alpha``)."""
        out = dataclasses.asdict(self)
        for section in OWNED:
            out[section].update(out[section].pop("settings") or {})
        return out

    def get(self, dotted: str) -> Any:
        """The setting at a dotted key, as --set names it (``select.alpha`` reads the
        method's own settings)."""
        obj: Any = self
        for part in dotted.split("."):
            own = getattr(obj, "settings", None)
            obj = getattr(obj if hasattr(obj, part) or own is None else own, part)
        return obj


# An owned section: its key that names the owner -> the owner's ``Settings`` (a dataclass
# with ``RANGES``, beside the owner's class) holds the rest of its keys.
OWNED = {"data": "name", "train": "schedule", "select": "method", "zeroshot": "predictor"}
