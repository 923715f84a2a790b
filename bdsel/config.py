"""Typed run configuration: defaults < YAML file < ``--set key.path=value`` overrides.

Every key has a type and a default here; unknown keys, wrong types and impossible
values raise :class:`ConfigError` naming the key before any work starts. Names of
registered things (selection method, models, dataset, zero-shot predictor) are checked
against their registries by ``bdsel.names.check_names``: this module imports
nothing from bdsel, so every other module can import it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what was expected."""


# ----------------------------------------------------------------------------- YAML


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4``, ``1E-4``, ``5e3`` and ``-1e-3``
    are numbers, as everyone types them (YAML 1.1, PyYAML's default, reads them as strings
    unless they carry a dot: ``1.0e-4``)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Keep every resolver but 1.1's float, then add the 1.2 one (matched before int, as in PyYAML).
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text as bdsel reads every config: :class:`YamlLoader`."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: where, and what (PyYAML's own text takes four)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


NON_FINITE = re.compile(r"[-+]?\.?(nan|inf|infinity)", re.I)


@dataclass
class NoiseConfig:
    # symmetric: a chosen point gets another class uniformly; pairflip: class c -> c+1;
    # uniform: RHO-LOSS's noise, a uniformly random label that may equal the true one.
    kind: Literal["none", "symmetric", "pairflip", "uniform"] = "none"
    rate: float = 0.0


@dataclass
class ImbalanceConfig:
    # Exponential long tail: class c keeps n_max * ratio ** (-c / (C - 1)) points; 1 = balanced.
    ratio: float = 1.0


# cleanlab.filter.find_label_issues's filter_by choices (cleanlab's default first)
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
    filter_by: FilterBy = "prune_by_noise_rate"


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # a registered dataset (bdsel.data.list_datasets)
    root: str | None = None  # None: the dataset's documented default location
    download: bool = False  # torchvision datasets only
    train_list: str | None = None  # imagefolder: "relative/path label" lines (WebVision style)
    test_list: str | None = None
    image_size: int = 224  # imagefolder only: crop size
    train_fraction: float = 0.5
    holdout_fraction: float = 0.0
    # A clean-labelled split for tuning (eval.split: validation), drawn after the hold-out
    # from the same permutation: disjoint from the train subset, the hold-out and the test set.
    validation_fraction: float = 0.0
    split_seed: int | None = None  # None: the run's seed
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    augment: bool = True
    num_workers: int = 4  # imagefolder DataLoader workers


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    weights: str | None = None  # local state-dict file for the backbone (vit_b16)


@dataclass
class TrainConfig:
    epochs: int = 20
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    schedule: Literal["none", "cosine", "step"] = "none"
    step_milestones: list[int] = field(default_factory=list)  # epochs, step schedule
    step_gamma: float = 0.1
    device: str = "auto"  # auto: cuda when available, else cpu
    # torch.compile of the model for the training step and the candidate forward. auto: on
    # CUDA only; on CPU it did not pay (small_cnn, one thread: bayesian 84.8 ms/step compiled
    # against 72.4 eager, uniform equal; docs/results/speed/).
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


@dataclass
class SvpConfig:
    """Selection via proxy: a small proxy model picks a one-shot coreset."""

    model: str = "small_cnn"
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 128
    fraction: float = 0.1  # coreset size, a fraction of the train subset
    criterion: Literal["entropy", "least_confidence", "forgetting"] = "entropy"


@dataclass
class InfobatchConfig:
    # InfoBatch (select.method=infobatch): each pruning epoch drops this share of the samples
    # whose last loss is below the mean, for the first ``delta`` of the epochs.
    prune_ratio: float = 0.5
    delta: float = 0.875


@dataclass
class SelectConfig:
    method: str = "uniform"
    n_candidates: int = 320  # n_B
    n_selected: int = 32  # n_b
    candidate_bn: Literal["batch", "eval"] = "batch"  # batch-norm statistics in the scoring pass
    # Autocast of the no-grad scoring pass over the candidates; bf16 keeps the top-n_b ranking
    # (README "Speed") at about half the cost of fp32 on a CPU that computes bf16 natively.
    # auto: bf16 where the device does (CUDA; a CPU with AVX-512 BF16 or AMX), else fp32 (on a
    # CPU with AVX2 only, emulated bf16 made a bayesian epoch about 6x slower than fp32).
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
    adaptive_alpha: bool = False
    n_samples: int = 256
    # Common random numbers: one set of S noise vectors for all candidates (bdsel.laplace).
    shared_noise: bool = True
    prior_precision: float = 10.0
    n_effective: float = 200.0
    momentum: float = 0.99
    fisher: Literal["empirical", "ggn"] = "empirical"
    svp: SvpConfig = field(default_factory=SvpConfig)
    infobatch: InfobatchConfig = field(default_factory=InfobatchConfig)


@dataclass
class FitConfig:
    """A bdsel model a predictor trains (with the weight EMA) to its plateau: at most
    ``epochs``, stopping after ``patience`` epochs without a better score and keeping the
    best epoch (0: all epochs, the last kept and scored once)."""

    model: str = "small_cnn"
    epochs: int = 30
    patience: int = 3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    # cosine: the learning rate decays to 0 over ``epochs`` (a fixed budget reaches the
    # plateau in fewer epochs than a constant rate; early stopping still keeps the best).
    schedule: Literal["none", "cosine"] = "none"


@dataclass
class HoldoutConfig(FitConfig):
    """The ``holdout`` predictor: trained on the hold-out split's clean labels, scored for
    early stopping on a calibration split carved from the hold-out."""

    calibration_fraction: float = 0.1  # of the hold-out: early stopping and the temperature


@dataclass
class CrossfitConfig(FitConfig):
    """The ``crossfit`` predictor: K models, each trained on the observed labels of all folds
    of the training subset but one (early stopping on that one's) and predicting it; by
    default they train for the clean label through the noise channel that a first round's
    out-of-fold probabilities estimate; no clean labels needed (docs/predictors.md). A fixed
    budget with a cosine rate instead of a fit to the plateau: noisy labels take many epochs
    to plateau, 10 cosine epochs at lr 0.01 came within 1.5 points of it (86.6% against 88.2%
    test accuracy, Fashion-MNIST at 20% noise) in a third of the time (304 s against 796 s on
    one CPU thread; docs/results/offline/predictor_budget.md); through the channel, 20 epochs
    gained 2.0 points over 10 at 40% noise (docs/results/holdout_free/crossfit_recipe.md), and
    16 instead of 18 cost bayesian 0.06-0.36 points at the end (docs/results/holdout_free/)."""

    folds: int = 2
    epochs: int = 18
    patience: int = 0
    lr: float = 0.01
    schedule: Literal["none", "cosine"] = "cosine"
    # 1: the K models of one round predict. 2 (the default): a second round of K fresh models
    # on the same folds (still no row predicted by a model that trained on it), trained as
    # ``refit`` says from the first round's out-of-fold probabilities.
    rounds: int = 2
    # forward (the default): every row, through the noise channel the round before estimates
    # (anchor points), with the forward loss correction: the models learn the clean label.
    # Skipped where that channel leaves a class unidentifiable. trusted: the rows cleanlab
    # trusts, their observed labels; skipped where it trusts under half of them
    # (crossfit.MIN_TRUSTED). Measured, 100 epochs (docs/results/holdout_free/): forward is level
    # with one round at 20% symmetric noise, +0.5 points at 40%, +1.9 at 30% pairflip; trusted
    # lost 0.3-0.5 points at symmetric noise.
    refit: Literal["trusted", "forward"] = "forward"
    refit_filter: FilterBy = "prune_by_noise_rate"  # cleanlab's filter_by between rounds
    # A forward refit's first round only estimates the channel, from out-of-fold
    # probabilities: it trains the models of the first ``channel_folds`` folds, for
    # ``channel_epochs`` each (the later rounds: every fold's, ``epochs``).
    channel_folds: int = 1
    channel_epochs: int = 8
    # The channel a forward refit trains through. auto: the anchor-point matrix where its rows
    # put their off-diagonal mass on one class (a pair flip), else the symmetric channel of its
    # noise rate, where the anchor matrix would also carry the model's own confusions
    # (bdsel.data.noise_channel.choose_channel). anchor: the anchor-point matrix always.
    # fitted: as auto, but the symmetric channel's rate is the one of most likelihood of the
    # observed labels (with a temperature) under the channel round's out-of-fold
    # probabilities, not the anchor diagonal's, which counts the model's confusions as noise.
    channel: Literal["auto", "anchor", "fitted"] = "auto"
    # How the round after the channel round starts its models of the first ``channel_folds``
    # folds. fresh: a new model, ``epochs`` through the channel. continue: the channel round's
    # model of that fold (trained on the same rows) goes on through the channel for
    # ``epochs - channel_epochs`` more, with a fresh optimizer and schedule: every model
    # trains ``epochs`` in all, and the channel round costs nothing beyond them.
    refit_init: Literal["fresh", "continue"] = "fresh"
    # Clean-then-select: true trains the fold models on the train subset ``data.clean`` leaves
    # (a cache made for that subset), so that its rows are scored by models of the cleaned
    # data, not by the ones whose agreement let their wrong labels through cleaning. Measured
    # (docs/predictors.md, seed 0): bayesian with them ended 0.6-0.8 points below bayesian with
    # the cleaning cache itself, and still over-selected the mislabeled points cleaning left.
    cleaned: bool = False

    @property
    def channel_round(self) -> bool:
        """Whether the first round only estimates the noise channel (a forward refit's)."""
        return self.rounds > 1 and self.refit == "forward"


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
    folds: int = 2
    epochs: int = 5  # minibatch Adam, from zero weights
    lr: float = 0.003
    weight_decay: float = 0.001  # L2 on the weights
    batch_size: int = 256
    # auto: a second round of probes learns the clean label through the noise channel the
    # first round's out-of-fold probabilities estimate (anchor points where concentrated, as
    # a pair flip's are, else symmetric at the fitted rate). none: the first round stands.
    channel: Literal["auto", "none"] = "auto"


@dataclass
class ZeroshotConfig:
    predictor: str = "holdout"  # a registered predictor (bdsel.zeroshot.list_predictors)
    cache: str | None = (
        None  # None: cache/<stem>-<settings hash>.h5 (the predictor declares the stem)
    )
    # Applied at read time, log_softmax(logprobs / T). auto: the T fitted when the cache was
    # made, by the least NLL of labels the predictor never trained on (bdsel.zeroshot.calibration).
    temperature: float | Literal["auto"] = "auto"
    # auto, when the predictor calibrates on observed labels (crossfit, clip): the T fitted
    # together with a symmetric label-noise rate, so that p_zs is the probability of the clean
    # label, not of the observed one (which gives every mislabeled point about ε/(K − 1)).
    # false: the plain fit to the observed labels (what bdsel did before; README, Results).
    calibrate_noise: bool = True
    model: str = "RN50"  # clip: an open_clip architecture name, or a JSON architecture file
    pretrained: str = "openai"  # clip: a pretrained tag (needs internet) or a local checkpoint
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int = 256
    device: str = "auto"
    prompts: str | None = None  # YAML/JSON file with class_names and templates
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    crossfit: CrossfitConfig = field(default_factory=CrossfitConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # train: use a cache whose stored predictor settings differ from these (bdsel train
    # --accept-cache-mismatch); recorded here so that the run directory says so.
    accept_mismatch: bool = False


# An evaluated variant "<weights>/<BN statistics>" that eval.extra can add to every record.
EvalVariant = Literal[
    "online/running", "online/recalibrate", "ema/running", "ema/recalibrate", "ema/online_bn"
]


@dataclass
class EvalConfig:
    every: int = 1  # epochs
    batch_size: int = 1000
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
    bn_samples: int = 6400
    extra: list[EvalVariant] = field(default_factory=list)  # more variants in each record


@dataclass
class ReportConfig:
    targets: list[float] = field(default_factory=lambda: [0.8])


@dataclass
class Config:
    seed: int = 0
    name: str | None = None  # run name; default <config>-<method>-s<seed>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    zeroshot: ZeroshotConfig = field(default_factory=ZeroshotConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


# ----------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        # A number of the right type but out of bounds says so, not "expected float or ...".
        raise next((e for e in errors if "finite" in str(e)), None) or ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r}"
        )
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    ok = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if ok.get(tp, False):
        if tp is float and not math.isfinite(value):  # .inf / .nan make no sense for any key
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value) if tp is float else value
    if tp is float and isinstance(value, str) and NON_FINITE.fullmatch(value.strip()):
        raise ConfigError(f"{key}: expected a finite number, got {value!r} (not finite)")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; valid keys here: "
            + ", ".join(prefix + n for n in names)
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=c"`` -> ``{"a": {"b": yaml(c)}}``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--set {key}: cannot parse {raw!r} as YAML ({yaml_error_line(exc)})"
        ) from None
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def shipped_config_dir() -> Path:
    import bdsel_configs

    return Path(bdsel_configs.__file__).parent


def list_shipped_configs() -> list[str]:
    return sorted(p.stem for p in shipped_config_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the bare name of a shipped config (``configs/NAME.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    shipped = shipped_config_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"no config named {name_or_path!r}; shipped configs: "
        + ", ".join(list_shipped_configs())
        + " (or give a path to a YAML file)"
    )


def read_yaml_mapping(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file: ``{}``); ``error`` in one line
    naming the file otherwise."""
    try:
        loaded = yaml_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({yaml_error_line(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(
            f"{path}: expected a mapping at the top level (key: value lines), got {loaded!r:.60}"
        )
    return loaded


def load_config(
    name_or_path: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> Config:
    """Build and validate a Config from a YAML file (or shipped name), a dict, and overrides."""
    merged: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        loaded = read_yaml_mapping(path, ConfigError)
        if not loaded:
            # Training on the built-in defaults (no noise, 20 epochs, ...) is never what an
            # empty file meant: a truncated copy, a wrong path, an unsaved editor buffer.
            raise ConfigError(
                f"{path}: the config is empty; an empty config would train on the built-in "
                "defaults. Give at least one key (e.g. data.name), or a shipped config "
                f"({', '.join(list_shipped_configs())})"
            )
        merged = _merge(merged, loaded)
        merged.setdefault("name", None)
        if merged["name"] is None and path.parent == shipped_config_dir():
            merged["name"] = path.stem
    if values:
        merged = _merge(merged, values)
    for text in overrides:
        merged = _merge(merged, parse_override(text))
    config = _build(Config, merged)
    validate(config)
    return config


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _positive(v: Any) -> bool:
    return v > 0


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _within(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    return lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high)


POSITIVE_INT, POSITIVE_FLOAT, NON_NEGATIVE = "a positive int", "a positive float", "a float >= 0"
# (key, test of its value, what it expects), checked in this order by validate().
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", _at_least(0), "an int >= 0 (it also seeds the split unless data.split_seed)"),
    ("data.split_seed", lambda v: v is None or v >= 0, "null or an int >= 0"),
    ("data.train_fraction", _within(0, 1, low_open=True), "a fraction in (0, 1]"),
    ("data.holdout_fraction", _within(0, 1, high_open=True), "a fraction in [0, 1)"),
    ("data.validation_fraction", _within(0, 1, high_open=True), "a fraction in [0, 1)"),
    ("data.noise.rate", _within(0, 1), "a fraction in [0, 1]"),
    ("data.imbalance.ratio", _at_least(1), "a max/min class-size ratio >= 1"),
    ("data.image_size", _positive, "a positive int"),
    ("data.num_workers", _at_least(0), "an int >= 0"),
    ("select.n_candidates", _at_least(1), POSITIVE_INT),
    ("select.n_selected", _at_least(1), POSITIVE_INT),
    ("select.alpha", _within(0, 1), "a weight in [0, 1]"),
    ("select.n_samples", _at_least(1), POSITIVE_INT),
    ("select.prior_precision", _at_least(0), NON_NEGATIVE),
    ("select.n_effective", _positive, POSITIVE_FLOAT),
    ("select.momentum", _within(0, 1, high_open=True), "a float in [0, 1)"),
    ("select.warmup_epochs", _at_least(0), "an int >= 0"),
    ("select.prefilter", _within(0, 1, low_open=True), "a fraction in (0, 1]"),
    ("select.rescore", _within(0, 1, low_open=True), "a fraction in (0, 1]"),
    ("select.anneal", _within(0, 1, high_open=True), "a fraction of the epochs in [0, 1)"),
    ("select.infobatch.prune_ratio", _within(0, 1, high_open=True), "a fraction in [0, 1)"),
    ("select.infobatch.delta", _within(0, 1), "a fraction of the epochs in [0, 1]"),
    ("select.svp.fraction", _within(0, 1, low_open=True), "a fraction in (0, 1]"),
    ("select.svp.epochs", _at_least(1), POSITIVE_INT),
    ("select.svp.lr", _positive, POSITIVE_FLOAT),
    ("select.svp.batch_size", _at_least(1), POSITIVE_INT),
    ("zeroshot.temperature", lambda v: v == "auto" or v > 0, "auto or a positive float"),
    ("zeroshot.batch_size", _at_least(1), POSITIVE_INT),
    ("zeroshot.holdout.epochs", _at_least(1), POSITIVE_INT),
    ("zeroshot.holdout.patience", _at_least(0), "an int >= 0 (0: no early stop)"),
    ("zeroshot.holdout.calibration_fraction", _within(0, 1, low_open=True, high_open=True),
     "a fraction in (0, 1)"),
    ("zeroshot.crossfit.folds", _at_least(2), "an int >= 2"),
    ("zeroshot.crossfit.rounds", _at_least(1), POSITIVE_INT),
    ("zeroshot.crossfit.epochs", _at_least(1), POSITIVE_INT),
    ("zeroshot.crossfit.patience", _at_least(0), "an int >= 0 (0: no early stop)"),
    ("zeroshot.crossfit.lr", _positive, POSITIVE_FLOAT),
    ("zeroshot.crossfit.weight_decay", _at_least(0), NON_NEGATIVE),
    ("zeroshot.crossfit.batch_size", _at_least(1), POSITIVE_INT),
    ("zeroshot.crossfit.channel_folds", _at_least(1), POSITIVE_INT),
    ("zeroshot.crossfit.channel_epochs", _at_least(1), POSITIVE_INT),
    ("zeroshot.probe.folds", _at_least(2), "an int >= 2"),
    ("zeroshot.probe.epochs", _at_least(1), POSITIVE_INT),
    ("zeroshot.probe.lr", _positive, POSITIVE_FLOAT),
    ("zeroshot.probe.weight_decay", _at_least(0), NON_NEGATIVE),
    ("zeroshot.probe.batch_size", _at_least(1), POSITIVE_INT),
    ("zeroshot.holdout.lr", _positive, POSITIVE_FLOAT),
    ("zeroshot.holdout.weight_decay", _at_least(0), NON_NEGATIVE),
    ("zeroshot.holdout.batch_size", _at_least(1), POSITIVE_INT),
    ("train.epochs", _at_least(1), POSITIVE_INT),
    ("train.budget_s", lambda v: v is None or v > 0, "null or a positive number of seconds"),
    ("train.lr", _positive, POSITIVE_FLOAT),
    ("train.weight_decay", _at_least(0), NON_NEGATIVE),
    ("train.momentum", _within(0, 1, high_open=True), "a float in [0, 1)"),
    ("train.step_gamma", _positive, "a positive factor (the lr is multiplied by it)"),
    ("train.step_milestones", lambda v: all(m >= 0 for m in v), "epochs >= 0"),
    ("train.log_every", _at_least(1), POSITIVE_INT),
    ("train.ema_decay", _within(0, 1, high_open=True), "a decay in [0, 1) (0: no EMA)"),
    ("eval.bn_samples", _at_least(1), POSITIVE_INT),
    ("train.device", lambda v: bool(DEVICE_PATTERN.fullmatch(v)), "auto, cpu, cuda, cuda:N or mps"),
    ("zeroshot.device", lambda v: bool(DEVICE_PATTERN.fullmatch(v)),
     "auto, cpu, cuda, cuda:N or mps"),
    ("eval.every", _at_least(1), POSITIVE_INT),
    ("eval.batch_size", _at_least(1), POSITIVE_INT),
    ("report.targets", lambda v: all(0.0 < x <= 1.0 for x in v), "accuracies in (0, 1]"),
]  # fmt: skip


def validate(config: Config) -> None:
    """Impossible values, named by key: each of RULES, then the settings that only go
    together."""
    for key, ok, expected in RULES:
        if not ok(config.get(key)):
            raise ConfigError(f"{key}: expected {expected}, got {config.get(key)!r}")
    _check_combinations(config)


def _check_combinations(config: Config) -> None:
    d, s = config.data, config.select
    if config.eval.split == "validation" and d.validation_fraction <= 0.0:
        raise ConfigError(
            "eval.split=validation needs a validation split: set data.validation_fraction > 0"
        )
    if d.train_fraction + d.holdout_fraction + d.validation_fraction > 1.0 + 1e-9:
        raise ConfigError(
            "data.train_fraction + data.holdout_fraction + data.validation_fraction = "
            f"{d.train_fraction + d.holdout_fraction + d.validation_fraction:g} > 1: "
            "the subsets must be disjoint"
        )
    if d.noise.kind == "none" and d.noise.rate > 0:
        raise ConfigError(
            "data.noise.rate > 0 needs data.noise.kind (symmetric, pairflip, uniform)"
        )
    if s.n_selected > s.n_candidates:
        raise ConfigError(
            f"select.n_selected ({s.n_selected}) > select.n_candidates ({s.n_candidates}): "
            "cannot select more points than there are candidates"
        )
    c = config.zeroshot.crossfit
    if c.channel_folds > c.folds:
        raise ConfigError(
            f"zeroshot.crossfit.channel_folds ({c.channel_folds}) > zeroshot.crossfit.folds "
            f"({c.folds}): the channel round cannot train more fold models than there are folds"
        )
    if c.channel_round and c.refit_init == "continue" and c.channel_epochs >= c.epochs:
        raise ConfigError(
            f"zeroshot.crossfit.refit_init=continue needs channel_epochs ({c.channel_epochs}) < "
            f"epochs ({c.epochs}): a continued model trains epochs - channel_epochs more (lower "
            "zeroshot.crossfit.channel_epochs, or set zeroshot.crossfit.refit_init=fresh)"
        )
    if c.cleaned and config.data.clean.cache is None:
        raise ConfigError(
            "zeroshot.crossfit.cleaned=true trains the fold models on the points data.clean "
            "keeps: set data.clean.cache to the crossfit cache that cleans them"
        )
    if c.cleaned and config.zeroshot.cache == config.data.clean.cache:
        raise ConfigError(
            "zeroshot.crossfit.cleaned=true: zeroshot.cache is data.clean.cache, the cache that "
            "cleans the data; the cleaned data's cache needs a file of its own (leave "
            "zeroshot.cache unset for its default name)"
        )
    if config.eval.model == "ema" and config.train.ema_decay == 0.0:
        raise ConfigError("eval.model=ema needs train.ema_decay > 0 (or set eval.model=online)")


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
