"""Configuration: a YAML file plus command-line overrides -> one validated, frozen `Config`.

Every default lives here, with one comment that says why; configs/default.yaml spells the same
values out for reading (a test keeps the two equal). Errors name where the value came from (the
file or the option), the key, the bad value and what is allowed, in one line.
"""

from __future__ import annotations

import copy
import math
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from actstat.errors import ActstatError, ConfigError, DataError
from actstat.registry import closest

# Documented limits that keep a typo from asking for terabytes (a memory pre-flight may replace them).
MAX_DEPTH = 10_000
MAX_WIDTH = 65_536
MAX_BRANCH_DEPTH = 64  # Linear+activation layers in one residual branch
MAX_BATCH = 1_000_000
# values in one sample (data.shape's product, gaussian's input_size, tokens' length): a 1024×1024
# image, or 3×512×512, fits; a typo such as input_size 10000000 (80 GB at batch 1000) does not
MAX_SAMPLE_VALUES = 1_048_576
MAX_VOCAB = 16_777_216  # data.vocab of `tokens`: far above any tokenizer's (GPT-4's ~100k)
DTYPES = ("float32", "float64", "float16", "bfloat16")
# the init that leaves a user's model as its factory made it (not in the registry: it draws nothing)
KEEP = "keep"
# `compare --model` with no inits: the model's own against the usual re-initialisations
MODEL_INITS = [KEEP, "default", "lecun", "xavier", "kaiming"]
DATA_SOURCES = ("mnist", "gaussian", "tokens")  # named sources; anything else is a path
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Section(BaseModel):
    # strict: a YAML "20" is not the integer 20, and `true` is not 1
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(_Section):
    depth: int = Field(20, ge=1, le=MAX_DEPTH)  # hidden Linear+activation blocks; 20 shows drift
    width: int | list[int] = 100  # hidden units: one for every layer, or one per layer
    bias: bool = True  # Linear layers carry a bias (initialised by init.bias)
    num_classes: int = Field(10, ge=1)  # outputs of the final linear head (MNIST's 10 digits)
    # a user's model instead of the MLP (depth, width, bias and num_classes then do not apply):
    # `path/to/file.py:make_model` (relative to the config file) or `package.module:factory`,
    # called with `kwargs` (actstat/sources.py)
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # the tensor of a tuple or dict output that the loss is taken of (default: the first)
    output: int | str | None = None
    # measure only these modules: class names (Conv2d, nn.LayerNorm) or name patterns
    # (blocks.*); default: every weight layer, its consumer, norms and repeated blocks
    layers: list[str] | None = None
    # residual: `depth` blocks x + α·branch(x), each branch `branch_depth` Linear+activation
    # layers of the one width, between an input layer and the head (actstat/model.py)
    block: Literal["plain", "residual"] = "plain"
    branch_depth: int = Field(2, ge=1, le=MAX_BRANCH_DEPTH)
    # a norm layer per block: residual, before its branch (pre) or after the add (post);
    # plain, between each hidden Linear and its activation (pre) or after the activation (post)
    norm: Literal["none", "batchnorm", "layernorm", "rmsnorm"] = "none"
    norm_position: Literal["pre", "post"] = "pre"
    # None: no multiplier; a number: a learnable scalar α per branch that starts at it (0: ReZero)
    multiplier: float | None = None

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, layers: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if layers is not None and not layers:
            raise ValueError("an empty list selects nothing: leave layers out to measure the "
                             "default layers")
        if layers is not None and info.data.get("factory") is None and "factory" in info.data:
            raise ValueError("selects modules of your own model (--model, model.factory); the "
                             "built-in MLP is measured whole: leave layers out, or give a model")
        return layers

    @field_validator("width")
    @classmethod
    def _widths_in_range(cls, width: int | list[int]) -> int | list[int]:
        for w in [width] if isinstance(width, int) else width:
            if not 1 <= w <= MAX_WIDTH:
                raise ValueError(f"every width must be between 1 and {MAX_WIDTH}")
        if isinstance(width, list) and not width:
            raise ValueError("a width list needs one entry per hidden layer")
        return width

    @model_validator(mode="after")
    def _one_width_per_layer(self) -> ModelConfig:
        if isinstance(self.width, list) and len(self.width) != self.depth:
            raise ValueError(
                f"width lists {len(self.width)} layers but depth is {self.depth}: "
                "give one width per hidden layer, or a single int"
            )
        return self

    @model_validator(mode="after")
    def _residual_keys(self) -> ModelConfig:
        if self.factory is not None:
            given = [key for key in ARCHITECTURE_KEYS
                     if getattr(self, key) != ModelConfig.model_fields[key].default]
            if given:
                one = len(given) == 1
                raise ValueError(f"{', '.join(given)} {'is' if one else 'are'} for the built-in "
                                 "model; a model factory's model is its own: leave "
                                 f"{'it' if one else 'them'} out")
        if self.block == "residual" and len(set(self.widths)) > 1:
            raise ValueError("residual blocks add each branch to its input: give one width "
                             f"for every layer (got {self.width})")
        if self.multiplier is not None and self.block != "residual":
            raise ValueError("multiplier scales a residual branch: set block: residual, or "
                             "leave multiplier out")
        if self.multiplier is not None and not math.isfinite(self.multiplier):
            raise ValueError(f"multiplier must be a finite number (got {self.multiplier})")
        return self

    @property
    def plain_mlp(self) -> bool:
        """The built-in MLP as the stacked probe measures it: no factory, plain blocks, no norm."""
        return self.factory is None and self.block == "plain" and self.norm == "none"

    @property
    def widths(self) -> list[int]:
        """The width of each hidden layer, in order."""
        return [self.width] * self.depth if isinstance(self.width, int) else list(self.width)


# the model keys that describe the built-in model's blocks (refused with a factory)
ARCHITECTURE_KEYS = ("block", "branch_depth", "norm", "norm_position", "multiplier")
# the model keys a compare scheme may set for itself: its structure, and its depth (so that a
# plain MLP of 100 hidden layers can face 50 residual blocks of 2: 100 weight layers each)
SCHEME_MODEL_KEYS = ("depth", *ARCHITECTURE_KEYS)


class _Spec(BaseModel):
    """A registry name and its parameters; written flat in YAML: `{name: kaiming, mode: fan_out}`.

    A bare string is the name with default parameters. Parameters are checked against the
    registry entry's signature by `load_config` (see `_resolve_spec`), which also fills in every
    default, so the resolved config says exactly what ran.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            return {"name": raw}
        if isinstance(raw, Mapping) and "params" not in raw:
            own = set(cls.model_fields) - {"params"}
            return {**{k: v for k, v in raw.items() if k in own},
                    "params": {k: v for k, v in raw.items() if k not in own}}
        return raw

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        extra = {k: getattr(self, k) for k in type(self).model_fields if k not in ("name", "params")}
        return {"name": self.name, **self.params, **extra}


class BiasSpec(_Spec):
    """How biases start: zeros (default), constant, normal, uniform, or default (PyTorch's)."""

    name: str = "zeros"


class InitSpec(_Spec):
    name: str = "kaiming"  # the init this tool is usually reached for; fits the default relu
    bias: BiasSpec = Field(default_factory=BiasSpec)


class ActivationSpec(_Spec):
    name: str = "relu"


class SchemeSpec(_Section):
    """One scheme of a `compare:` list: an init and an activation, each with its parameters, and
    optionally model keys of its own (`model: {block: residual, depth: 50}`), so that one compare
    can set a plain MLP beside residual and normalised ones (SCHEME_MODEL_KEYS only: width,
    bias and the data stay the config's, so the schemes differ in structure alone)."""

    init: InitSpec
    activation: ActivationSpec
    model: dict[str, Any] | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _model_keys(cls, model: Any) -> Any:
        if model is not None and not isinstance(model, Mapping):
            raise ValueError(f"must be a mapping of model keys ({', '.join(SCHEME_MODEL_KEYS)})")
        return model


# `actstat compare` with no schemes given: the fast.ai lesson-8/9 experiments (N(0, 1) weights,
# 1/sqrt(fan_in), Kaiming, "ReLU minus 0.5", PyTorch's own default) and the textbook contrasts
LESSON_SCHEMES: list[dict[str, Any]] = [
    {"init": "randn", "activation": "tanh"},
    {"init": "randn", "activation": "relu"},
    {"init": "lecun", "activation": "tanh"},
    {"init": "lecun", "activation": "relu"},
    {"init": "xavier", "activation": "tanh"},
    {"init": "kaiming", "activation": "relu"},
    {"init": "kaiming", "activation": {"name": "general_relu", "subtract": 0.5}},
    {"init": "default", "activation": "relu"},
    {"init": "zeros", "activation": "relu"},
]


class DataConfig(_Section):
    source: str = "mnist"  # mnist (bundled sample), gaussian, tokens, or a path (.npy/.npz/.pt/IDX)
    batch_size: int = Field(1000, ge=1, le=MAX_BATCH)  # one batch; enough for stable statistics
    # standardize: pixels to [0, 1] (uint8 only), then mean 0, std 1 over the whole source;
    # scale: only the [0, 1] pixel scaling; none: the raw numbers
    normalize: Literal["standardize", "scale", "none"] = "standardize"
    # features of `gaussian` data (MNIST's 28²); with data.shape, its product (filled in)
    input_size: int = Field(784, ge=1, le=MAX_SAMPLE_VALUES)
    # one sample's shape, without the batch dimension ([784], [1, 28, 28], [3, 32, 32]); None:
    # flat (gaussian: [input_size]; a file or mnist: its features per sample) unless the model's
    # first layer asks for another (actstat/data.py, `sample_shape_for`)
    shape: list[int] | None = None
    # `tokens`: integer ids drawn uniformly from [0, vocab), `length` per sample (for models that
    # start with an Embedding); 1000 ids and 32 per sample are small enough for any test model
    vocab: int = Field(1000, ge=2, le=MAX_VOCAB)
    length: int = Field(32, ge=1, le=MAX_SAMPLE_VALUES)

    @model_validator(mode="before")
    @classmethod
    def _size_from_shape(cls, raw: Any) -> Any:
        # gaussian (or tokens) data of a given shape has its product as input_size (or length):
        # record it, so the resolved config says so and loads again as it is
        if not isinstance(raw, Mapping):
            return raw
        shape, source = raw.get("shape"), raw.get("source", cls.model_fields["source"].default)
        key = {"gaussian": "input_size", "tokens": "length"}.get(source) \
            if isinstance(source, str) else None
        if key and key not in raw and isinstance(shape, list) and shape \
                and all(type(n) is int and n >= 1 for n in shape) \
                and math.prod(shape) <= MAX_SAMPLE_VALUES:
            return {**raw, key: math.prod(shape)}
        return raw

    @field_validator("shape")
    @classmethod
    def _shape_in_range(cls, shape: list[int] | None) -> list[int] | None:
        if shape is None:
            return shape
        if not shape:
            raise ValueError("needs at least one dimension, such as [784] or [1, 28, 28]")
        if any(n < 1 for n in shape):
            raise ValueError("every dimension must be ≥ 1")
        if math.prod(shape) > MAX_SAMPLE_VALUES:
            raise ValueError(f"one sample may hold at most {MAX_SAMPLE_VALUES:,} values; this "
                             f"shape holds {math.prod(shape):,}")
        return shape

    @model_validator(mode="after")
    def _shape_agrees(self) -> DataConfig:
        if self.shape is None:
            return self
        values = math.prod(self.shape)
        if self.source == "gaussian" and self.input_size != values:
            raise ValueError(f"shape {self.shape} has {values} values per sample but input_size "
                             f"is {self.input_size}: give one of them, or make them agree")
        if self.source == "tokens" and self.length != values:
            raise ValueError(f"shape {self.shape} has {values} values per sample but length is "
                             f"{self.length}: give one of them, or make them agree")
        return self


class Thresholds(_Section):
    """When a layer is flagged; every statistic's definition is in actstat/analysis.py."""

    # post std < vanishing · input std: the signal has lost 90 % of its scale
    vanishing: float = Field(0.1, gt=0)
    # post std > exploding · input std
    exploding: float = Field(10.0, gt=0)
    # more than this fraction of a layer's units dead (kaiming+relu reaches ~0.2 at depth 20)
    dead: float = Field(0.5, ge=0, le=1)
    # more than this fraction of a layer's values saturated
    saturated: float = Field(0.5, ge=0, le=1)
    # |t| > 0.97 counts as saturated for tanh (Karpathy, makemore part 3); scaled for other ranges
    saturation_cut: float = Field(0.97, gt=0, lt=1)
    # |x| < near_zero counts as near zero; absolute, 1 % of the unit scale a good init keeps
    near_zero: float = Field(0.01, ge=0)
    # units equal to within this fraction of the layer's largest |value| are identical
    symmetric: float = Field(1e-4, ge=0, lt=1)
    # std of dL/d(pre) < grad_vanishing · the last hidden layer's: with one learning rate this
    # layer learns 10x slower (xavier+relu: 1e-3 at layer 1 of 20; kaiming+relu stays ~0.75)
    grad_vanishing: float = Field(0.1, gt=0)
    # std of dL/d(pre) > grad_exploding · the last hidden layer's (randn+tanh: 1e7)
    grad_exploding: float = Field(10.0, gt=0)
    # a residual branch whose rms is more than this times the stream's it is added to: the
    # block's output is mostly the branch (healthy at init: transformers 0.01-0.7, a ResNet
    # trained with BatchNorm ~1; docs/statistics.md)
    branch: float = Field(2.0, gt=0)
    # an attention head whose mean normalised entropy is below this: it attends to one key
    # (entropy collapse; uniform attention is 1, a fresh transformer's heads ~0.99)
    attention_entropy: float = Field(0.1, gt=0, lt=1)
    # an attention logit above this: softmax is one-hot there and its gradient vanishes
    # (attention logit growth; a fresh transformer's are below 1; docs/statistics.md)
    attention_logit: float = Field(50.0, gt=0)
    # actstat train: a layer's std this many times (or 1/this of) an earlier step's is an event
    std_jump: float = Field(100.0, gt=1)
    # actstat train: the loss fell by at least this fraction of step 0's: the scheme trained
    # (MNIST's 10 classes start at ln 10 ≈ 2.3; a net that learns is below 1 within 300 steps)
    trained: float = Field(0.25, gt=0, lt=1)
    # actstat coord-check: a layer whose mean |x| grows (shrinks) faster than width**this
    # grows_with_width (shrinks_with_width). Tensor Programs V's MLP reads 1.1 at the logits
    # under SP + Adam, within ±0.2 everywhere under μP (docs/coord-check.md)
    width_slope: float = Field(0.3, gt=0)


def thresholds_from(given: Thresholds | Mapping[str, float] | None) -> Thresholds:
    """The Python API's `thresholds=`: a Thresholds, a mapping of its keys, or None (defaults)."""
    if given is None:
        return Thresholds()
    if isinstance(given, Thresholds):
        return given
    try:
        return Thresholds.model_validate(dict(given))
    except ValidationError as err:
        raise ConfigError(validation_message(err, Thresholds, "thresholds")) from None


# at init (every baseline), then through training (a baseline written by `actstat train`)
METRIC_NAMES = ("pre_std", "post_std", "grad_std", "pre_mean", "post_mean", "grad_mean",
                "loss", "train_std", "train_mean", "train_grad_std", "train_near_zero",
                "train_dead")
Metric = Literal["pre_std", "post_std", "grad_std", "pre_mean", "post_mean", "grad_mean",
                 "loss", "train_std", "train_mean", "train_grad_std", "train_near_zero",
                 "train_dead"]


class MetricTolerance(_Section):
    rtol: float | None = Field(None, gt=0)  # for a std metric, or the loss
    atol: float | None = Field(None, ge=0)  # for a mean metric, or a fraction


class CheckConfig(_Section):
    """`actstat check` against a baseline (definitions: actstat/check.py)."""

    # std metrics and the loss: |ln(obtained / expected)| <= ln(1 + rtol); 0.05 fails any 10 % change and
    # passes another thread count or torch patch release (~1e-6 apart)
    rtol: float = Field(0.05, gt=0)
    # mean metrics: |obtained - expected| <= atol x the expected std of that tensor; fractions
    # (train_near_zero, train_dead): |obtained - expected| <= atol
    atol: float = Field(0.05, ge=0)
    metrics: list[Metric] = Field(default_factory=lambda: list(METRIC_NAMES))
    tolerances: dict[Metric, MetricTolerance] = Field(default_factory=dict)  # per metric
    # a coord check's baseline: a slope may move this much (its seeds' spread is 0.05 to 0.25
    # under SP at the default widths; the same seeds on one machine repeat it exactly)
    slope_atol: float = Field(0.1, gt=0)


MAX_TRAIN_STEPS = 1_000_000
DEFAULT_TRAIN_STEPS = 200  # actstat train, when neither the config nor --steps sets train.steps
DEFAULT_LR = {"sgd": 0.1, "adam": 0.001}  # Adam's is Kingma & Ba's (and torch's) own
DEFAULT_MOMENTUM = {"sgd": 0.0, "adam": 0.9}


class TrainConfig(_Section):
    """Training: `run --steps` (the probe: plain SGD on the one measured batch, steps and lr
    only) and `actstat train` (every key; definitions: actstat/watch.py)."""

    # run/compare: SGD steps on the batch after the measurement (0: none); actstat train: the
    # steps to train (0: DEFAULT_TRAIN_STEPS)
    steps: int = Field(0, ge=0, le=MAX_TRAIN_STEPS)
    # the learning rate; None: the optimiser's usual one (SGD 0.1, the probe's too; Adam 0.001)
    lr: float | None = Field(None, gt=0, le=10)
    # actstat train only
    every: int = Field(10, ge=1, le=MAX_TRAIN_STEPS)  # record the statistics every this many steps
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)  # mini-batch size, drawn from the data's pool
    optimizer: Literal["sgd", "adam"] = "sgd"
    # sgd: heavy-ball momentum; adam: beta1; None: SGD 0 (plain, as the probe), Adam 0.9 (its
    # own). SGD with momentum 0.9 steps about 10 times further: a tenth of the lr is comparable
    momentum: float | None = Field(None, ge=0, lt=1)
    warmup: int = Field(0, ge=0, le=MAX_TRAIN_STEPS)  # steps of linear learning-rate warm-up

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def beta(self) -> float:
        """SGD's momentum or Adam's β₁, as set or the optimiser's own."""
        return self.momentum if self.momentum is not None else DEFAULT_MOMENTUM[self.optimizer]


# actstat coord-check: the widths when none are given (each twice the last), and the hidden
# layers of the built-in MLP when neither the config nor --depth sets model.depth (the
# reference figures' 784 -> w -> w -> 10; model.depth's own default, 20, is for `run`)
DEFAULT_WIDTHS = [64, 128, 256, 512, 1024]
COORD_CHECK_DEPTH = 2
MAX_WIDTH = 1 << 20


class CoordCheckConfig(_Section):
    """actstat coord-check: train copies of the model at several widths for a few steps and
    follow each layer's mean |x| (definitions: actstat/coordcheck.py)."""

    widths: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: list(DEFAULT_WIDTHS))  # at least 3, different
    steps: int = Field(4, ge=0, le=10_000)  # updates; each layer is measured at init and after each
    seeds: int = Field(3, ge=1, le=64)  # copies per width, seeds seed, seed + 1, ...
    # sp: the scheme's init and one learning rate; mup: Tensor Programs V's μP
    # (actstat/parametrisation.py), for the built-in MLP
    param: Literal["sp", "mup"] = "sp"
    base_width: int | None = Field(None, ge=1, le=MAX_WIDTH)  # μP's base; None: the smallest width
    optimizer: Literal["sgd", "adam"] = "adam"  # Adam: where SP's updates grow with width
    lr: float = Field(0.01, gt=0, le=10)  # the base learning rate (μP scales it per layer)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)  # mini-batches, from the data's pool
    # a model factory's keyword argument that sets its width (d_model, channels)
    width_arg: str | None = None

    @field_validator("widths")
    @classmethod
    def _three_widths(cls, widths: list[int]) -> list[int]:
        if len(set(widths)) < 3:
            raise ValueError("give at least three different widths (a slope of two points "
                             "has no spread)")
        if len(set(widths)) != len(widths):
            raise ValueError("a width is listed twice")
        return sorted(widths)


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    init: list[InitSpec] = Field(default_factory=lambda: [InitSpec()])  # every init x every act
    activation: list[ActivationSpec] = Field(default_factory=lambda: [ActivationSpec()])
    compare: list[SchemeSpec] = Field(default_factory=list)  # schemes one by one, after the grid
    data: DataConfig = Field(default_factory=DataConfig)
    device: str = "auto"  # auto: cuda when available, else cpu; or cpu, cuda, cuda:N
    dtype: Literal["float32", "float64", "float16", "bfloat16"] = "float32"
    seed: int = Field(0, ge=0, le=2**63 - 1)  # one seed: the batch and every scheme's weights
    grad: bool = True  # one backward pass of cross-entropy on the batch's labels; no step
    theory: bool = True  # mean-field expected std per layer and the scheme's phase
    hist: bool = False  # a histogram of every post-activation (terminal heat map, figures)
    train: TrainConfig = Field(default_factory=TrainConfig)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    check: CheckConfig = Field(default_factory=CheckConfig)
    coord_check: CoordCheckConfig = Field(default_factory=CoordCheckConfig)

    @field_validator("init", "activation", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Mapping)) else value

    @model_validator(mode="after")
    def _some_scheme(self) -> Config:
        if self.model.factory is not None:
            if self.activation or self.compare:
                raise ValueError("a model factory runs its own activations: list inits only "
                                 "(init: [keep, kaiming]), no activation or compare entries")
            if not self.init:
                raise ValueError("no schemes to run: list inits (keep: the model's own)")
            return self
        if any(spec.name == KEEP for spec in self.init):
            raise ValueError(f"init '{KEEP}' keeps a model factory's own init; the built-in MLP "
                             "has none to keep (nn.Linear's own is `default`)")
        if bool(self.init) != bool(self.activation):
            empty = "init" if not self.init else "activation"
            raise ValueError(f"{empty} is empty: the init × activation grid needs entries in both "
                             "(or neither, with a compare: list)")
        if not self.init and not self.compare:
            raise ValueError("no schemes to run: list init and activation, or a compare: list")
        return self

    @field_validator("device")
    @classmethod
    def _device_form(cls, device: str) -> str:
        if not DEVICE_PATTERN.match(device):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return device

    @model_validator(mode="after")
    def _mlp_takes_flat_features(self) -> Config:
        if self.model.factory is None and self.data.source == "tokens":
            raise ValueError("data.source tokens gives integer ids, for a model factory whose "
                             "model starts with an Embedding (--model); the built-in MLP takes "
                             "real-valued features: use mnist, gaussian or a file")
        if self.model.factory is None and self.data.shape is not None \
                and len(self.data.shape) > 1:
            raise ValueError("data.shape shapes the samples for a model factory's model "
                             "(--model); the built-in MLP takes flat features: give one "
                             "dimension, or none")
        return self

    def scheme_model(self, scheme: SchemeSpec) -> ModelConfig:
        """The model a compare scheme runs: the config's, with the scheme's own model keys."""
        if not scheme.model:
            return self.model
        return ModelConfig.model_validate({**self.model.model_dump(), **scheme.model})

    @property
    def mixed_models(self) -> bool:
        """Whether some compare scheme runs a model other than the config's."""
        return any(self.scheme_model(scheme) != self.model for scheme in self.compare)

    @model_validator(mode="after")
    def _training_needs_gradients(self) -> Config:
        if self.train.steps and not self.grad:
            raise ValueError("train.steps needs gradients: drop --no-grad (grad: false) or set "
                             "steps to 0")
        return self


# ----------------------------------------------------------------------------------------------
# loading


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file, or a ConfigError that says what is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start:
            problem += f" ({context} at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys (model, init, activation, ...), "
            f"not a {type(raw).__name__}"
        )
    return raw


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None, *,
                default_schemes: list[dict[str, Any]] | None = None,
                defaults: Mapping[str, Any] | None = None) -> Config:
    """Validate a YAML file (None: the defaults) with command-line overrides applied on top.

    `overrides` maps dotted keys to values, e.g. {"model.depth": 30, "init": ["kaiming"]}, and
    names the option each came from in errors through `OPTION_NAMES`. A relative data path in
    the file is taken relative to the file; on the command line, relative to the working dir.

    Schemes: the init × activation grid when either is given (file or options), plus the
    `compare:` list. With neither, `default_schemes` (as a compare list) if given, else the
    default grid (kaiming × relu). The result always spells its schemes out. `defaults`: dotted
    keys set where neither the file nor the overrides set them (a command's own defaults).
    """
    path = Path(path) if path is not None else None
    raw = read_yaml(path) if path is not None else {}
    for dotted, value in (defaults or {}).items():
        if dotted not in (overrides or {}) and not _has_dotted(raw, dotted):
            _set_dotted(raw, dotted, value)
    origin = str(path) if path is not None else "defaults"
    if path is not None:
        raw = anchored(raw, path.parent)
    return config_from_dict(raw, origin, overrides, default_schemes=default_schemes)


def config_from_dict(raw: Mapping[str, Any], origin: str,
                     overrides: Mapping[str, Any] | None = None, *,
                     default_schemes: list[dict[str, Any]] | None = None) -> Config:
    """A Config from an already-read mapping (a YAML file's, or a report's resolved config),
    validated and resolved as `load_config` does; `origin` names it in errors."""
    raw = copy.deepcopy(dict(raw))
    overrides = dict(overrides or {})
    for section in ("init", "activation"):
        if section in overrides:
            overrides[section] = _named_from(raw.get(section), overrides[section], section)
    raw = _labels_read(raw, origin)
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    raw = _named_model_data(raw, origin, overrides)
    model = raw.get("model")
    if isinstance(model, Mapping) and model.get("factory") is not None:
        # a user's model: its schemes are inits alone, keep (its own) unless any are given
        if "init" not in raw:
            raw["init"] = MODEL_INITS if default_schemes is not None else [KEEP]
        raw.setdefault("activation", [])
    elif "init" not in raw and "activation" not in raw:
        if not raw.get("compare") and default_schemes is not None:
            raw["compare"] = default_schemes
        if raw.get("compare"):
            raw["init"], raw["activation"] = [], []
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err, Config, origin, overrides)) from None
    return _resolved(config, origin, overrides)


def _resolved(config: Config, origin: str, overrides: Mapping[str, Any]) -> Config:
    specs = {}
    for section in ("init", "activation"):
        entries = getattr(config, section)
        specs[section] = [
            spec if section == "init" and _keeps(spec, f"{section}[{i}]", origin) else
            _resolve_spec(spec, section, f"{section}[{i}]" if len(entries) > 1 else section,
                          _origin_of(section, overrides, origin))
            for i, spec in enumerate(entries)
        ]
    specs["compare"] = [
        scheme.model_copy(update={
            part: _resolve_spec(getattr(scheme, part), part, f"compare[{i}].{part}",
                                _origin_of("compare", overrides, origin))
            for part in ("init", "activation")})
        for i, scheme in enumerate(config.compare)
    ]
    for i, spec in enumerate(specs["init"]):
        _check_structural(spec, config.model, f"{_origin_of('init', overrides, origin)}: init"
                          + (f"[{i}]" if len(specs["init"]) > 1 else ""))
    for i, scheme in enumerate(specs["compare"]):
        where = _origin_of("compare", overrides, origin)
        model = _scheme_model(config, scheme, f"compare[{i}].model", where, overrides)
        _check_structural(scheme.init, model, f"{where}: compare[{i}].init")
    _check_applies(config, origin, overrides)
    return config.model_copy(update=specs)


def _scheme_model(config: Config, scheme: SchemeSpec, key: str, where: str,
                  overrides: Mapping[str, Any]) -> ModelConfig:
    """A compare scheme's model keys checked as the model section's own are, in one line."""
    if not scheme.model:
        return config.model
    unknown = [k for k in scheme.model if k not in SCHEME_MODEL_KEYS]
    if unknown:
        # width is a model key, just not a scheme's: no "did you mean 'depth'?" for it
        guess = None if unknown[0] in ModelConfig.model_fields else \
            closest(str(unknown[0]), list(SCHEME_MODEL_KEYS))
        hint = f"did you mean '{guess}'? " if guess else ""
        raise ConfigError(f"{where}: {key}.{unknown[0]}: a scheme sets only the model's depth "
                          f"and structure ({hint}valid keys here: "
                          f"{', '.join(SCHEME_MODEL_KEYS)}); width and bias are the config's, "
                          "for every scheme")
    try:
        return config.scheme_model(scheme)
    except ValidationError as err:
        given = {f"model.{k}" for k in overrides if k.startswith("model.")}
        source = f"{where} with {', '.join(OPTION_NAMES.get(k, k) for k in sorted(given))}" \
            if given and not err.errors()[0]["loc"] else where
        raise ConfigError(_one_line(err, ModelConfig, source, {}, prefix=key)) from None


def _check_applies(config: Config, origin: str, overrides: Mapping[str, Any]) -> None:
    """A model key that describes a part no scheme's model has (a residual branch's depth with
    plain blocks only, a norm's position without a norm) is refused, not ignored."""
    models = [config.model, *(config.scheme_model(scheme) for scheme in config.compare)]
    defaults = ModelConfig.model_fields
    for key, needs, part in (("branch_depth", lambda m: m.block == "residual",
                              "counts the layers of a residual branch: set model.block residual "
                              "(--block residual)"),
                             ("norm_position", lambda m: m.norm != "none",
                              "places a norm layer: set model.norm (--norm layernorm, ...)")):
        if getattr(config.model, key) != defaults[key].default and not any(map(needs, models)):
            where = _origin_of(f"model.{key}", overrides, origin)
            raise ConfigError(f"{where}: model.{key}: {part}, or leave {key} out")


def _check_structural(spec: InitSpec, model: ModelConfig, where: str) -> None:
    """A structural init (fixup, rezero, gpt2, bert) sets every bias to 0 and draws by the
    built-in model's structure: refuse a bias init, a factory's model, and (for those that need
    them) a model without residual blocks, in one line. A data-dependent init (lsuv) takes any
    model, but sets its biases itself: refuse a bias init."""
    from actstat import inits

    if spec.name in inits.DATA_INITS and spec.bias != BiasSpec():
        raise ConfigError(f"{where}: {spec.name} re-centres every bias on the batch (each starts "
                          "at 0): drop init.bias")
    factory = inits.RESIDUAL_INITS.get(spec.name)
    if factory is None:
        return
    made = factory(**spec.params)
    if model.factory is not None:
        raise ConfigError(f"{where}: {spec.name} draws by the built-in model's structure; a "
                          "model factory's model (--model) takes a per-weight init")
    if made.needs_residual and model.block != "residual":
        raise ConfigError(f"{where}: {spec.name} needs residual blocks: set model.block residual "
                          "(--block residual)")
    if spec.bias != BiasSpec():
        raise ConfigError(f"{where}: {spec.name} sets every bias to 0: drop init.bias")


def _keeps(spec: InitSpec, where: str, origin: str) -> bool:
    """Whether `spec` is `keep` (a model factory's own init; the config already refused it for the
    MLP), which takes no parameters."""
    if spec.name.lower() != KEEP:
        return False
    if spec.params or spec.bias != BiasSpec():
        raise ConfigError(f"{origin}: {where}: init '{KEEP}' takes no parameters: it leaves "
                          "every weight and bias as the model's factory made them")
    return True


def check_data_source(config: Config, where: str = "") -> None:
    """A DataError now if the data source is a path that cannot be read, before torch starts and
    any model is built (actstat/data.py reads it; this only opens it). `where`: what set it, for
    the message (`--data`, or the config file)."""
    source = config.data.source
    if source in DATA_SOURCES:
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise no_such_source(source, where)
    try:
        if path.is_dir():
            next(iter(path.iterdir()), None)
        else:
            with path.open("rb") as stream:
                stream.read(1)
    except OSError as err:
        raise DataError(f"{where + ': ' if where else ''}data.source: cannot read '{source}' "
                        f"({err.strerror})") from None


def no_such_source(source: str, where: str = "") -> DataError:
    """The one message for a data source that is neither a named source nor an existing path:
    the option or file that set it, the valid sources, what was given."""
    return DataError(f"{where + ': ' if where else ''}data.source: must be "
                     f"{', '.join(DATA_SOURCES)}, or an existing .npy, .npz or .pt file or MNIST "
                     f"IDX directory (got '{source}': no such file or directory)")


def anchored(raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A config's relative file paths (data.source, model.factory's file) taken relative to
    `base`, the config file's directory, as `load_config` reads them."""
    return _anchor_factory_path(_anchor_data_path(dict(raw), base), base)


def config_paths(raw: Mapping[str, Any]) -> dict[str, str]:
    """The file paths a config names: {"data.source": ..., "model.factory": the file of a
    `file.py:factory`} (named sources and module factories are not paths)."""
    from actstat.errors import ModelSourceError
    from actstat.sources import parse

    paths = {}
    source = (raw.get("data") or {}).get("source")
    if isinstance(source, str) and source not in DATA_SOURCES:
        paths["data.source"] = source
    factory = (raw.get("model") or {}).get("factory")
    if isinstance(factory, str):
        try:
            spec = parse(factory)
        except ModelSourceError:
            spec = None
        if spec is not None and spec.path is not None:
            paths["model.factory"] = str(spec.path)
    return paths


def with_paths(raw: Mapping[str, Any], rewrite: Any) -> dict[str, Any]:
    """The config with each file path it names (`config_paths`) replaced by `rewrite(path)`."""
    raw = copy.deepcopy(dict(raw))
    for key, path in config_paths(raw).items():
        section, field = key.split(".")
        value = raw[section][field]
        raw[section][field] = value.replace(path, rewrite(path), 1)
    return raw


def _anchor_data_path(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        source = data["source"]
        if source not in DATA_SOURCES and not Path(source).expanduser().is_absolute():
            raw = {**raw, "data": {**data, "source": str(base / Path(source).expanduser())}}
    return raw


def _anchor_factory_path(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """A factory file named relative to the config file, as the data path is."""
    from actstat.errors import ModelSourceError
    from actstat.sources import parse

    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("factory"), str):
        return raw
    try:
        spec = parse(model["factory"])
    except ModelSourceError:  # reported when the model is built, with the full spec
        return raw
    if spec.path is None or spec.path.is_absolute():
        return raw
    return {**raw, "model": {**model, "factory": f"{base / spec.path}:{spec.attribute}"}}


def _named_from(entries: Any, names: list[Any], section: str) -> list[Any]:
    """For each name given on the command line, the file's entry of that name (with its
    parameters) if the file has one, else the bare name. Names match as the registry reads
    them: `--init KAIMING` or `--init he` picks the file's `kaiming` entry."""
    from actstat import activations, inits  # torch-importing: only when a config is loaded
    from actstat.registry import normal_form, resolve

    registry = inits.ALL_INITS if section == "init" else activations.ACTIVATIONS

    def key(name: str) -> str:
        try:
            canonical, implied = resolve(registry, name, section)
        except ConfigError:  # reported by _resolve_spec, with where it came from
            return normal_form(name)
        # an alias with parameters of its own (he_uniform) names no file entry but itself
        return normal_form(name) if implied else canonical

    entries = [entries] if isinstance(entries, (str, Mapping)) else list(entries or [])
    by_name = {}
    for entry in entries:
        name = entry if isinstance(entry, str) else entry.get("name") if isinstance(entry, Mapping) \
            else None
        if isinstance(name, str):
            by_name.setdefault(key(name), entry)
    return [by_name.get(key(name), name) if isinstance(name, str) else name for name in names]


def _has_dotted(raw: Mapping[str, Any], dotted: str) -> bool:
    node: Any = raw
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True
def _labels_read(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Init and activation entries written as tables print them (`general_relu(subtract=0.5)`)
    as the mappings they stand for, validated from there on as any entry is."""
    from actstat.registry import parse_label

    def read(entry: Any, key: str) -> Any:
        if not isinstance(entry, str):
            return entry
        try:
            return parse_label(entry)
        except ConfigError as err:
            raise ConfigError(f"{origin}: {key}: {err}") from None

    raw = dict(raw)
    for section in ("init", "activation"):
        entries = raw.get(section)
        if isinstance(entries, list):
            raw[section] = [read(entry, f"{section}[{i}]") for i, entry in enumerate(entries)]
        elif entries is not None:
            raw[section] = read(entries, section)
    if isinstance(raw.get("compare"), list):
        raw["compare"] = [
            {**scheme, **{part: read(scheme[part], f"compare[{i}].{part}")
                          for part in ("init", "activation") if part in scheme}}
            if isinstance(scheme, Mapping) else scheme for i, scheme in enumerate(raw["compare"])]
    return raw


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """`raw[a][b] = value` for "a.b"; a mapping (--model-arg's keywords) is merged into the
    file's mapping there, key by key, rather than replacing it."""
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
        value = {**node[leaf], **value}
    node[leaf] = value


def _named_model_data(raw: dict[str, Any], origin: str,
                      overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A model by name (`hf:gpt2`, actstat/hf.py) takes the data its config says, where the
    config file and the options give none: token ids from its whole vocabulary, TOKEN_LENGTH
    per sample or its context length where that is shorter; images of its channels and size
    (gaussian); a small batch (a stock-sized transformer keeps much per token for the
    backward), and its classifier's classes as model.num_classes. A vocabulary or a length
    given beyond the model's is refused here, in one line that names the option that sets it."""
    from actstat import hf

    model = raw.get("model")
    data = raw.get("data", {})
    if not isinstance(model, dict) or not hf.is_hf(model.get("factory")) \
            or not isinstance(data, dict) or not isinstance(model.get("kwargs", {}), dict):
        return raw  # not a named model, or a mistake that validation reports
    named = hf.resolve(model["factory"], model.get("kwargs"))
    takes = hf.inputs(named)
    data = dict(data)
    if "source" not in data and takes.source is not None:
        data["source"] = takes.source
    source = data.get("source", DataConfig.model_fields["source"].default)
    if source == "tokens" and takes.source == "tokens":
        vocab, length = data.get("vocab"), data.get("length")
        if isinstance(vocab, int) and takes.vocab is not None and vocab > takes.vocab:
            option = _origin_of("data.vocab", overrides, f"{origin}: data.vocab")
            raise DataError(f"{option} is {vocab} but {named.spec} has {takes.vocab} tokens "
                            f"(vocab_size): ids from {takes.vocab} on would index past its "
                            f"embedding; set --vocab {takes.vocab} or less (data.vocab in a "
                            "config), or leave it out to draw from the whole vocabulary")
        if isinstance(length, int) and takes.context is not None and length > takes.context:
            option = _origin_of("data.length", overrides, f"{origin}: data.length")
            raise DataError(f"{option} is {length} but {named.spec} takes at most "
                            f"{takes.context} tokens ({takes.context_key}): set --length "
                            f"{takes.context} or less (data.length in a config), or raise "
                            f"{takes.context_key} with --model-arg")
        data.setdefault("vocab", takes.vocab)
        data.setdefault("length", min(hf.TOKEN_LENGTH, takes.context or hf.TOKEN_LENGTH))
    if source == "gaussian" and takes.shape is not None \
            and not {"shape", "input_size"} & set(data):
        data["shape"] = list(takes.shape)
    data.setdefault("batch_size", hf.BATCH)
    raw = {**raw, "data": data}
    if takes.classes is not None and "num_classes" not in model:
        raw["model"] = {**model, "num_classes": takes.classes}
    train = raw.get("train", {})
    batch = data["batch_size"]
    # training draws its mini-batches from the data's samples: no more than there are
    if isinstance(train, dict) and "batch_size" not in train and isinstance(batch, int) \
            and batch < TrainConfig.model_fields["batch_size"].default:
        raw["train"] = {**train, "batch_size": batch}
    return raw


def _resolve_spec(spec: _Spec, section: str, prefix: str, where: str) -> _Spec:
    """Check a spec's name and parameters against its registry; fill in every default."""
    from actstat import activations, inits  # torch-importing: only when a config is loaded
    from actstat.registry import entry, parameters_model, resolve

    registry = inits.ALL_INITS if section == "init" else activations.ACTIVATIONS
    try:
        # any case or an alias; the report records the registry's own name
        name, factory, given = entry(registry, spec.name,
                                     "init" if section == "init" else "activation", spec.params)
    except ConfigError as err:
        raise ConfigError(f"{where}: {prefix}.name: {err}") from None
    model = parameters_model(factory)
    try:
        params = dict(model.model_validate(given))
    except ValidationError as err:
        detail = _one_line(err, model, where, {}, kind=f"{section} '{name}'", prefix=prefix)
        raise ConfigError(detail) from None
    try:
        factory(**params)  # value checks that need more than a type (e.g. low < high, gain names)
    except ActstatError as err:
        raise ConfigError(f"{where}: {prefix}: {err}") from None
    gain = params.get("gain")
    if section == "init" and isinstance(gain, str) and gain != "auto":
        # `gain: Tanh` is recorded as tanh, as names are; an alias with parameters of its own
        # (gelu_tanh) stays as written, since its gain is not its target's
        canonical, implied = resolve(activations.ACTIVATIONS, gain, "activation")
        params["gain"] = gain if implied else canonical
    update: dict[str, Any] = {"name": name, "params": params}
    if isinstance(spec, InitSpec):
        update["bias"] = _resolve_bias(spec.bias, f"{prefix}.bias", where)
    return spec.model_copy(update=update)


def _resolve_bias(spec: BiasSpec, key: str, where: str) -> BiasSpec:
    from actstat import inits
    from actstat.registry import entry, parameters_model

    try:
        name, factory, given = entry(inits.BIAS_INITS, spec.name, "bias init", spec.params)
        model = parameters_model(factory)
        params = dict(model.model_validate(given))
        factory(**params)
    except ConfigError as err:
        raise ConfigError(f"{where}: {key}: {err}") from None
    except ValidationError as err:
        raise ConfigError(_one_line(err, model, where, {}, kind=f"bias init '{spec.name}'",
                                    prefix=key)) from None
    return spec.model_copy(update={"name": name, "params": params})


def _origin_of(key: str, overrides: Mapping[str, Any], origin: str) -> str:
    return OPTION_NAMES.get(key, key) if key in overrides else origin


# the command-line option behind each overridable key, for messages
OPTION_NAMES = {
    "init": "--init",
    "activation": "--act",
    "model.depth": "--depth",
    "model.width": "--width",
    "model.bias": "--bias/--no-bias",
    "model.block": "--block",
    "model.branch_depth": "--branch-depth",
    "model.norm": "--norm",
    "model.factory": "--model",
    "model.kwargs": "--model-arg",
    "model.layers": "--layers",
    "data.batch_size": "--batch-size",
    "data.source": "--data",
    "data.vocab": "--vocab",
    "data.length": "--length",
    "device": "--device",
    "dtype": "--dtype",
    "seed": "--seed",
    "grad": "--grad/--no-grad",
    "theory": "--theory/--no-theory",
    "hist": "--hist",
    "train.steps": "--steps",
    "train.lr": "--lr",
    "check.rtol": "--rtol",
    "check.atol": "--atol",
    "check.metrics": "--metrics",
    "coord_check.widths": "--widths",
    "coord_check.steps": "--steps",
    "coord_check.seeds": "--seeds",
    "coord_check.param": "--param",
    "coord_check.base_width": "--base-width",
    "coord_check.optimizer": "--optimizer",
    "coord_check.lr": "--lr",
    "coord_check.batch_size": "--train-batch",
    "coord_check.width_arg": "--width-arg",
    "thresholds.width_slope": "--max-slope",
    "model.norm_position": "--norm-position",
    "model.multiplier": "--multiplier",
    "train.every": "--every",
    "train.momentum": "--momentum",
    "train.warmup": "--warmup",
    "train.batch_size": "--train-batch",
    "train.optimizer": "--optimizer",
}


# ----------------------------------------------------------------------------------------------
# one-line messages from pydantic's errors


def _one_line(err: ValidationError, model: type[BaseModel], origin: str,
              overrides: Mapping[str, Any], kind: str = "", prefix: str = "") -> str:
    """The first error as `origin: key: problem (got value)`, plus how many more there are."""
    # an unknown key usually explains a missing one (a typo): report it first
    errors = sorted(_union_arms_merged(err.errors(include_url=False), model, kind),
                    key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    key = f"{prefix}.{key}" if prefix and key else (prefix or key)
    where = origin
    for dotted in overrides:
        if key == dotted or key.startswith(dotted + ".") or key.startswith(dotted + "["):
            where = OPTION_NAMES.get(dotted, origin)
    inside = [OPTION_NAMES.get(d, d) for d in overrides if not key or d.startswith(key + ".")]
    if inside:  # a rule across keys, broken by options: name every source
        where = f"{origin} with {', '.join(inside)}" if origin != "defaults" else ", ".join(inside)
    problem = first.get("problem") or _problem(first, model, loc, kind)
    quiet = first["type"] in ("extra_forbidden", "missing") or isinstance(first["input"], Mapping)
    got = "" if quiet else f" (got {_show(first['input'])})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {key + ': ' if key else ''}{problem}{got}{more}"


def _union_arms_merged(errors: list[Any], model: type[BaseModel], kind: str) -> list[Any]:
    """pydantic's errors with the arms of a union (`width: int | list[int]`) told as one: the
    arm tag left out of the key, the arm that got furthest into the value kept (`--width 100,x`:
    `model.width[1]: must be a whole number (got 'x')`), arms that failed at once merged (`must be
    a whole number or a list`)."""
    merged: dict[tuple, list[Any]] = {}
    plain = []
    for error in errors:
        loc, tag_at = _without_union_tags(model, tuple(error["loc"]))
        error = {**error, "loc": loc}
        if tag_at is None:
            plain.append(error)
        else:
            merged.setdefault(loc[:tag_at], []).append(error)
    for arms in merged.values():
        deepest = max(len(arm["loc"]) for arm in arms)
        kept = [arm for arm in arms if len(arm["loc"]) == deepest]
        if len(kept) > 1 and len({arm["loc"] for arm in kept}) == 1:
            problems = [_problem(arm, model, arm["loc"], kind) for arm in kept]
            text = problems[0] + "".join(
                f" or {p.removeprefix('must be ')}" for p in problems[1:] if p != problems[0])
            kept = [{**kept[0], "problem": text}]
        plain += kept
    return plain


def _without_union_tags(model: type[BaseModel], loc: tuple) -> tuple[tuple, int | None]:
    """`loc` without the tags pydantic puts in it for the arm of a union it tried, and where the
    first tag was (None: none)."""
    current: Any = model
    kept: list[Any] = []
    tag_at = None
    for part in loc:
        while get_origin(current) is Annotated:
            current = get_args(current)[0]
        arms = [arg for arg in get_args(current) if arg is not type(None)] \
            if get_origin(current) in (Union, types.UnionType) else []
        if len(arms) > 1 and isinstance(part, str):
            tag_at = len(kept) if tag_at is None else tag_at
            current = next((arm for arm in arms if _arm_tag(arm) == part), None)
            continue
        kept.append(part)
        if isinstance(part, int):
            current = get_args(current)[0] if get_origin(current) is list else None
        elif isinstance(current, type) and issubclass(current, BaseModel) \
                and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            current = None
    return tuple(kept), tag_at


def _arm_tag(arm: Any) -> str:
    return arm.__name__ if isinstance(arm, type) else str(arm)


def validation_message(err: ValidationError, model: type[BaseModel], origin: str) -> str:
    """The first error of validating a document other than a config (a report) against `model`,
    in the same one line as a config's: `origin: key.path: problem (got value)`."""
    return _one_line(err, model, origin, {})


def _problem(error: Mapping[str, Any], model: type[BaseModel], loc: tuple, kind: str) -> str:
    kind_of = error["type"]
    ctx = error.get("ctx") or {}
    if kind_of == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        if kind and not valid:
            return f"unknown key: {kind} takes no parameters"
        guess = closest(str(loc[-1]), valid)
        hint = f"did you mean '{guess}'? " if guess else ""
        owner = f"for {kind}" if kind else "here"
        return f"unknown key ({hint}valid keys {owner}: {', '.join(valid) or 'none'})"
    if kind_of == "missing":
        return "is required"
    if kind_of == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind_of in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": "≥", "greater_than": ">",
                "less_than_equal": "≤", "less_than": "<"}[kind_of]
        bound = next(iter(ctx.values()))  # pydantic gives a float field's bound as 0.0: show 0
        return f"must be {sign} {bound:g}" if isinstance(bound, float) else f"must be {sign} {bound}"
    if kind_of.startswith("int_"):
        return "must be a whole number"
    if kind_of.startswith("float_"):
        return "must be a number"
    if kind_of.startswith("bool_"):
        return "must be true or false"
    if kind_of.startswith("string_"):
        return "must be a string"
    if kind_of.startswith(("list_", "tuple_")):
        return "must be a list"
    if kind_of in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (valid keys: {', '.join(_fields_at(model, loc))})"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the section at `loc` (list indices and unions looked through)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = _model_in(fields[part].annotation)
    if isinstance(current, type) and issubclass(current, _Spec):
        return ["name"] + [f for f in current.model_fields if f not in ("name", "params")]
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, Union, Annotated) or get_args(annotation):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
