"""The run configuration's settings: one dataclass per section, each setting's type and
default on its field and its allowed range in the class's ``RANGES`` beside them. Names of
registered things (selection method, models, dataset, zero-shot predictor) are checked
against their registries by ``bdsel.names.check_names``: this package imports nothing from
bdsel, so every other module can import it."""

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

    # cleanlab.filter.find_label_issues's filter_by choices (cleanlab's default first)
    RANGES: ClassVar[dict[str, Range]] = {
        "ratio": (at_least(1), "a max/min class-size ratio >= 1"),
    }  # fmt: skip


FilterBy = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
    "low_normalized_margin", "low_self_confidence",
]  # fmt: skip


@dataclass
class CleanConfig:
    # Clean-then-train: a crossfit cache (out-of-fold probabilities of models that never saw
    # each row) whose flagged label issues (cleanlab's find_label_issues) are dropped from
    # the train subset before any method trains. null: no cleaning.
    cache: str | None = None
    filter_by: FilterBy = "prune_by_noise_rate"  # cleanlab's filter_by


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # a registered dataset (bdsel.data.list_datasets)
    root: str | None = None  # None: the dataset's documented default location
    download: bool = False  # torchvision datasets only
    train_list: str | None = None  # imagefolder: "relative/path label" lines (WebVision style)
    test_list: str | None = None  # imagefolder: the test split's lines
    image_size: int = 224  # imagefolder only: crop size
    train_fraction: float = 0.5  # of the base training set (paper: 0.5)
    holdout_fraction: float = 0.0  # a disjoint clean split (holdout predictor)
    # A clean-labelled split for tuning (eval.split: validation), drawn after the hold-out
    # from the same permutation: disjoint from the train subset, the hold-out and the test set.
    validation_fraction: float = 0.0
    split_seed: int | None = None  # None: the run's seed
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    augment: bool = True  # random crops and flips where the dataset has them
    num_workers: int = 4  # imagefolder DataLoader workers
    RANGES: ClassVar[dict[str, Range]] = {
        "split_seed": (lambda v: v is None or v >= 0, "null or an int >= 0"),
        "train_fraction": (within(0, 1, low_open=True), "a fraction in (0, 1]"),
        "holdout_fraction": (within(0, 1, high_open=True), "a fraction in [0, 1)"),
        "validation_fraction": (within(0, 1, high_open=True), "a fraction in [0, 1)"),
        "image_size": (positive, "a positive int"),
        "num_workers": (at_least(0), "an int >= 0"),
    }  # fmt: skip


@dataclass
class ModelConfig:
    name: str = "small_cnn"  # a registered model (bdsel.models.list_models)
    weights: str | None = None  # local state-dict file for the backbone (vit_b16)


@dataclass
class TrainConfig:
    epochs: int = 20  # at most; train.budget_s may stop it sooner
    optimizer: Literal["adamw", "sgd"] = "adamw"  # AdamW by default (paper)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled (adamw) or L2 (sgd)
    momentum: float = 0.9  # sgd only
    schedule: Literal["none", "cosine", "step"] = "none"  # learning-rate schedule over the epochs
    step_milestones: list[int] = field(default_factory=list)  # epochs, step schedule
    step_gamma: float = 0.1  # step schedule: the factor at each milestone
    device: str = "auto"  # auto: cuda when available, else cpu
    # torch.compile of the model for the training step and the candidate forward. auto: on
    # CUDA only; on CPU it did not pay (docs/results/speed/).
    compile: bool | Literal["auto"] = "auto"
    # Exponential moving average of the weights (and BN buffers), updated after every
    # optimizer step with a decay warm-up (bdsel.evaluation); 0 turns it off.
    ema_decay: float = 0.998
    log_every: int = 50  # steps between progress updates (the only host syncs in an epoch)
    # TensorBoard event files in <run_dir>/tb/ with the scalars of metrics.jsonl (bdsel.tensorboard)
    tensorboard: bool = True
    # A time budget in seconds end to end: the predictor's (what the caches the run reads cost
    # to make, recorded in them) plus training's (selection included, evaluation excluded).
    # The run stops at the step that spends it (under torchrun at that epoch's end), or after
    # ``epochs``, and is evaluated there.
    # Methods then compare at equal seconds, not equal epochs. null: no budget.
    budget_s: float | None = None
    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": (at_least(1), POSITIVE_INT),
        "budget_s": (lambda v: v is None or v > 0, "null or a positive number of seconds"),
        "lr": (positive, POSITIVE_FLOAT),
        "weight_decay": (at_least(0), NON_NEGATIVE),
        "momentum": (within(0, 1, high_open=True), "a float in [0, 1)"),
        "step_gamma": (positive, "a positive factor (the lr is multiplied by it)"),
        "step_milestones": (lambda v: all(m >= 0 for m in v), "epochs >= 0"),
        "log_every": (at_least(1), POSITIVE_INT),
        "ema_decay": (within(0, 1, high_open=True), "a decay in [0, 1) (0: no EMA)"),
        "device": (is_device, DEVICE),
    }  # fmt: skip


@dataclass
class SvpConfig:
    """Selection via proxy: a small proxy model picks a one-shot coreset."""

    model: str = "small_cnn"  # the proxy model
    epochs: int = 5  # the proxy's training epochs
    lr: float = 1e-3  # the proxy's learning rate
    batch_size: int = 128  # the proxy's batch size
    fraction: float = 0.1  # coreset size, a fraction of the train subset
    # how the proxy ranks points
    criterion: Literal["entropy", "least_confidence", "forgetting"] = "entropy"
    RANGES: ClassVar[dict[str, Range]] = {
        "fraction": (within(0, 1, low_open=True), "a fraction in (0, 1]"),
        "epochs": (at_least(1), POSITIVE_INT),
        "lr": (positive, POSITIVE_FLOAT),
        "batch_size": (at_least(1), POSITIVE_INT),
    }  # fmt: skip


@dataclass
class InfobatchConfig:
    # InfoBatch (select.method=infobatch): each pruning epoch drops this share of the samples
    # whose last loss is below the mean, for the first ``delta`` of the epochs.
    prune_ratio: float = 0.5
    delta: float = 0.875  # the share of the epochs that prune
    RANGES: ClassVar[dict[str, Range]] = {
        "prune_ratio": (within(0, 1, high_open=True), "a fraction in [0, 1)"),
        "delta": (within(0, 1), "a fraction of the epochs in [0, 1]"),
    }  # fmt: skip


@dataclass
class SelectConfig:
    method: str = "uniform"  # a registered selector (bdsel.list_selectors)
    n_candidates: int = 320  # n_B
    n_selected: int = 32  # n_b
    # Autocast of the no-grad scoring pass over the candidates; bf16 keeps the top-n_b ranking
    # at a lower cost where the device computes bf16 natively (docs/speed.md). auto: bf16
    # there (CUDA; a CPU with AVX-512 BF16 or AMX), else fp32 (emulated bf16 is slower).
    candidate_precision: Literal["bf16", "fp32", "auto"] = "auto"
    warmup_epochs: int = 0  # uniform picks before selection starts
    anneal: float = 0.0  # fraction of the final epochs on uniform picks (InfoBatch's annealing)
    # A free first stage: keep this fraction of the candidates, those whose observed label
    # the cached predictor finds most plausible, before the candidate forward (1: off).
    prefilter: float = 1.0
    # Forward (and score) only this fraction of the candidates each step: those whose score
    # at their last visit was highest; every candidate in the first selecting epoch (1: off).
    rescore: float = 1.0
    # bayesian: score = a * mean_s log p(y|f_s) + (1-a) * log p_zs(y|x) - log mean_s p(y|f_s)
    alpha: float = 0.2
    adaptive_alpha: bool = False  # bayesian: alpha from the terms' scales
    n_samples: int = 256  # bayesian: S logit samples a candidate
    # Common random numbers: one set of S noise vectors for all candidates (bdsel.laplace).
    shared_noise: bool = True
    prior_precision: float = 10.0  # bayesian: tau_0
    n_effective: float = 200.0  # bayesian: n_e, the data size the posterior stands for
    momentum: float = 0.99  # bayesian: m, the KFAC factors' EMA
    fisher: Literal["empirical", "ggn"] = "empirical"  # bayesian: the curvature the posterior uses
    svp: SvpConfig = field(default_factory=SvpConfig)
    infobatch: InfobatchConfig = field(default_factory=InfobatchConfig)
    RANGES: ClassVar[dict[str, Range]] = {
        "n_candidates": (at_least(1), POSITIVE_INT),
        "n_selected": (at_least(1), POSITIVE_INT),
        "alpha": (within(0, 1), "a weight in [0, 1]"),
        "n_samples": (at_least(1), POSITIVE_INT),
        "prior_precision": (at_least(0), NON_NEGATIVE),
        "n_effective": (positive, POSITIVE_FLOAT),
        "momentum": (within(0, 1, high_open=True), "a float in [0, 1)"),
        "warmup_epochs": (at_least(0), "an int >= 0"),
        "prefilter": (within(0, 1, low_open=True), "a fraction in (0, 1]"),
        "rescore": (within(0, 1, low_open=True), "a fraction in (0, 1]"),
        "anneal": (within(0, 1, high_open=True), "a fraction of the epochs in [0, 1)"),
    }  # fmt: skip


@dataclass
class FitConfig:
    """A bdsel model a predictor trains (with the weight EMA) to its plateau: at most
    ``epochs``, stopping after ``patience`` epochs without a better score and keeping the
    best epoch (0: all epochs, the last kept and scored once)."""

    model: str = "small_cnn"  # a registered model
    epochs: int = 30  # at most
    patience: int = 3  # epochs without a better score before a stop
    optimizer: Literal["adamw", "sgd"] = "adamw"  # as train.optimizer
    lr: float = 1e-3  # learning rate
    weight_decay: float = 0.01  # as train.weight_decay
    batch_size: int = 128  # training batch size
    # cosine: the learning rate decays to 0 over ``epochs`` (a fixed budget reaches the
    # plateau in fewer epochs than a constant rate; early stopping still keeps the best).
    schedule: Literal["none", "cosine"] = "none"


@dataclass
class HoldoutConfig(FitConfig):
    """The ``holdout`` predictor: trained on the hold-out split's clean labels, scored for
    early stopping on a calibration split carved from the hold-out."""

    calibration_fraction: float = 0.1  # of the hold-out: early stopping and the temperature
    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": (at_least(1), POSITIVE_INT),
        "patience": (at_least(0), "an int >= 0 (0: no early stop)"),
        "calibration_fraction": (within(0, 1, low_open=True, high_open=True), "a fraction in (0, 1)"),
        "lr": (positive, POSITIVE_FLOAT),
        "weight_decay": (at_least(0), NON_NEGATIVE),
        "batch_size": (at_least(1), POSITIVE_INT),
    }  # fmt: skip


@dataclass
class CrossfitConfig(FitConfig):
    """The ``crossfit`` predictor: K models, each trained on the observed labels of all folds
    of the training subset but one (early stopping on that one's) and predicting it; by
    default they train for the clean label through the noise channel that a first round's
    out-of-fold probabilities estimate; no clean labels needed (docs/predictors.md). A fixed
    budget with a cosine rate instead of a fit to the plateau, which noisy labels reach only
    after many epochs (the budget's measurements: docs/results/offline/predictor_budget.md,
    docs/results/holdout_free/crossfit_recipe.md)."""

    folds: int = 2  # K: models, each predicting its own fold
    epochs: int = 18  # a fixed budget (patience 0)
    patience: int = 0  # 0: every epoch, the last kept
    lr: float = 0.01  # peak of the cosine schedule
    schedule: Literal["none", "cosine"] = "cosine"
    # 1: the K models of one round predict. 2 (the default): the first round only estimates
    # the noise channel, and a second round of K fresh models on the same folds (still no row
    # predicted by a model that trained on it) trains through it, with the forward loss
    # correction, for the clean label; skipped where that channel leaves a class
    # unidentifiable. More rounds: each estimates the channel again from the one before.
    rounds: int = 2
    # The channel round trains the models of the first ``channel_folds`` folds, for
    # ``channel_epochs`` each (the later rounds: every fold's, ``epochs``).
    channel_folds: int = 1
    channel_epochs: int = 8  # the channel round's epochs
    RANGES: ClassVar[dict[str, Range]] = {
        "folds": (at_least(2), "an int >= 2"),
        "rounds": (at_least(1), POSITIVE_INT),
        "epochs": (at_least(1), POSITIVE_INT),
        "patience": (at_least(0), "an int >= 0 (0: no early stop)"),
        "lr": (positive, POSITIVE_FLOAT),
        "weight_decay": (at_least(0), NON_NEGATIVE),
        "batch_size": (at_least(1), POSITIVE_INT),
        "channel_folds": (at_least(1), POSITIVE_INT),
        "channel_epochs": (at_least(1), POSITIVE_INT),
    }  # fmt: skip


@dataclass
class ProbeConfig:
    """The ``probe`` predictor (the offline default): K linear probes on frozen features, each
    fitted on the observed labels of all folds of the training subset but one and predicting
    it, then again through the noise channel their out-of-fold probabilities estimate; no
    clean label, one pass over the images (docs/predictors.md)."""

    # pixels: the raw pixels (in-memory datasets); clip: open_clip's image embeddings
    # (zeroshot.model, zeroshot.pretrained); backbone: a bdsel model's penultimate features
    # with its backbone weights from a local file (backbone, weights).
    features: Literal["pixels", "clip", "backbone"] = "pixels"
    backbone: str | None = None  # features=backbone: a registered model name
    weights: str | None = None  # features=backbone: its local backbone weights file
    folds: int = 2  # K probes, each predicting its own fold
    epochs: int = 5  # minibatch Adam, from zero weights
    lr: float = 0.003  # Adam's learning rate
    weight_decay: float = 0.001  # L2 on the weights
    batch_size: int = 256  # minibatch size
    # auto: a second round of probes learns the clean label through the noise channel the
    # first round's out-of-fold probabilities estimate (anchor points where concentrated, as
    # a pair flip's are, else symmetric at the fitted rate). none: the first round stands.
    channel: Literal["auto", "none"] = "auto"
    RANGES: ClassVar[dict[str, Range]] = {
        "folds": (at_least(2), "an int >= 2"),
        "epochs": (at_least(1), POSITIVE_INT),
        "lr": (positive, POSITIVE_FLOAT),
        "weight_decay": (at_least(0), NON_NEGATIVE),
        "batch_size": (at_least(1), POSITIVE_INT),
    }  # fmt: skip


@dataclass
class ZeroshotConfig:
    # a registered predictor (bdsel.predictors.list_predictors); probe: no clean label, seconds
    predictor: str = "probe"
    cache: str | None = (
        None  # None: cache/<stem>-<settings hash>.h5 (the predictor declares the stem)
    )
    # Applied at read time, log_softmax(logprobs / T). auto: the T fitted when the cache was
    # made, by the least NLL of labels the predictor never trained on (bdsel.calibration).
    temperature: float | Literal["auto"] = "auto"
    # auto, when the predictor calibrates on observed labels (crossfit, clip): the T fitted
    # together with a symmetric label-noise rate, so that p_zs is the probability of the clean
    # label, not of the observed one (which gives every mislabeled point about ε/(K − 1)).
    # false: the plain fit to the observed labels (docs/predictors.md).
    calibrate_noise: bool = True
    model: str = "RN50"  # clip: an open_clip architecture name, or a JSON architecture file
    pretrained: str = "openai"  # clip: a pretrained tag (needs internet) or a local checkpoint
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # clip: inference precision
    batch_size: int = 256  # inference batch size of the predictor
    device: str = "auto"  # auto: cuda when available, else cpu
    prompts: str | None = None  # YAML/JSON file with class_names and templates
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    crossfit: CrossfitConfig = field(default_factory=CrossfitConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # train: use a cache whose stored predictor settings differ from these (bdsel train
    # --accept-cache-mismatch); recorded here so that the run directory says so.
    accept_mismatch: bool = False
    RANGES: ClassVar[dict[str, Range]] = {
        "temperature": (lambda v: v == "auto" or v > 0, "auto or a positive float"),
        "batch_size": (at_least(1), POSITIVE_INT),
        "device": (is_device, DEVICE),
    }  # fmt: skip


@dataclass
class EvalConfig:
    every: int = 1  # epochs
    batch_size: int = 1000  # evaluation batch size
    # Where accuracy is measured: the test set, or data.validation_fraction of the training
    # set (for tuning; its records say val_acc instead of test_acc).
    split: Literal["test", "validation"] = "test"
    # Which weights test_acc is of: the EMA of the weights (train.ema_decay) or the online ones.
    model: Literal["ema", "online"] = "ema"
    # Also evaluate the other weights (the online ones beside the EMA's), recorded as
    # <split>_acc_online / <split>_acc_ema; false halves the cost of an evaluation.
    other_weights: bool = True
    # BN statistics at evaluation: the evaluated model's running ones, or re-estimated on a
    # fixed uniform sample of bn_samples training points before each evaluation.
    bn: Literal["running", "recalibrate"] = "recalibrate"
    bn_samples: int = 6400  # bn=recalibrate: training points for BN
    RANGES: ClassVar[dict[str, Range]] = {
        "bn_samples": (at_least(1), POSITIVE_INT),
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
    name: str | None = None  # run name; default <config>-<method>-s<seed>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    zeroshot: ZeroshotConfig = field(default_factory=ZeroshotConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    RANGES: ClassVar[dict[str, Range]] = {
        "seed": (at_least(0), "an int >= 0 (it also seeds the split unless data.split_seed)"),
    }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj
