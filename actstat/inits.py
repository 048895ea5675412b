"""Init registry: name -> factory of a function that initialises one nn.Linear weight (or bias).

Fans follow torch.nn.init for nn.Linear, whose weight is stored as (out_features, in_features):
fan_in = weight.size(1), fan_out = weight.size(0). A hand-made matrix used as `x @ W` is stored
(in, out), so there the two modes swap: fan_out of such a matrix is its fan-in, which is why the
fast.ai lesson called kaiming_normal_(w, mode='fan_out') on its (in, out) weights. Everything here
is for nn.Linear's layout.

Variances (n_in = fan_in, n_out = fan_out; uniform draws use bound √(3·variance)):

| init         | Var(W)                                     | note                                |
| randn        | 1                                          | N(0, 1): std grows ≈ √n_in per layer |
| zeros        | 0                                          | every unit identical: symmetric     |
| constant     | 0 (every weight = value)                   | symmetric                           |
| uniform      | (high - low)² / 12                         | U(low, high)                        |
| normal       | std²                                       | N(mean, std²)                       |
| lecun        | 1 / n_in                                   | LeCun 1998; gain 1 ('linear')       |
| xavier       | gain² · 2 / (n_in + n_out)                 | Glorot & Bengio 2010; gain 1        |
| kaiming      | gain² / n_in  (mode fan_in) or / n_out     | He et al. 2015; gain of the act     |
| orthogonal   | gain² / n_in for square W (rows/cols orthonormal) | Saxe et al. 2014             |
| default      | 1 / (3 n_in): U(±1/√n_in)                  | nn.Linear.reset_parameters          |
| trunc_normal | ≈ 0.774 · std² (N(0, std²) cut at ±2 std)  | transformer-style, std 0.02         |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from actstat.activations import make_activation
from actstat.errors import ConfigError
from actstat.registry import entry, parameters_model

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Distribution = Literal["normal", "uniform"]
# a number, "auto" (the gain of the run's activation) or an activation's name ("tanh" -> 5/3)
Gain = float | str

# (weight, gain of the run's activation, generator): fills the weight in place (return ignored)
WeightInit = Callable[[torch.Tensor, float, torch.Generator], object]
# (bias, fan_in, generator) -> None
BiasInit = Callable[[torch.Tensor, int, torch.Generator], object]


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of an nn.Linear weight stored as (out_features, in_features); of a
    convolution's (out, in / groups, *kernel), each times the kernel's size, as torch.nn.init
    computes them (a user's model re-initialised with --init)."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _gain(gain: Gain) -> Callable[[float], float]:
    """Resolve a `gain` parameter now (so a bad name fails at config time) into act_gain -> gain."""
    if isinstance(gain, str):
        if gain == "auto":
            return lambda act_gain: act_gain
        try:
            fixed = make_activation(gain).gain
        except ConfigError as err:
            raise ConfigError(f"gain must be a number, 'auto' or an activation name: {err}") from None
        return lambda act_gain: fixed
    if not math.isfinite(gain) or gain <= 0:
        raise ConfigError(f"gain must be a positive number, 'auto' or an activation name, not {gain}")
    return lambda act_gain: float(gain)


def _draw(weight: torch.Tensor, distribution: str, std: float, g: torch.Generator) -> None:
    """Fill with mean 0 and the given std from a normal or a uniform distribution."""
    if distribution == "normal":
        nn.init.normal_(weight, 0.0, std, generator=g)
    else:
        bound = math.sqrt(3.0) * std
        nn.init.uniform_(weight, -bound, bound, generator=g)


def randn() -> WeightInit:
    return lambda w, act_gain, g: nn.init.normal_(w, 0.0, 1.0, generator=g)


def zeros() -> WeightInit:
    return lambda w, act_gain, g: nn.init.zeros_(w)


def constant(*, value: float = 0.01) -> WeightInit:
    return lambda w, act_gain, g: nn.init.constant_(w, value)


def uniform(*, low: float = -0.05, high: float = 0.05) -> WeightInit:
    """U(low, high); the default ±0.05 is Keras' RandomUniform default."""
    if not low < high:
        raise ConfigError(f"uniform needs low < high, got low={low}, high={high}")
    return lambda w, act_gain, g: nn.init.uniform_(w, low, high, generator=g)


def normal(*, std: PositiveFloat = 0.05, mean: float = 0.0) -> WeightInit:
    """N(mean, std²); the default std 0.05 is Keras' RandomNormal default."""
    return lambda w, act_gain, g: nn.init.normal_(w, mean, std, generator=g)


def lecun(*, distribution: Distribution = "normal") -> WeightInit:
    def init(w: torch.Tensor, act_gain: float, g: torch.Generator) -> None:
        fan_in, _ = fans(w)
        _draw(w, distribution, 1.0 / math.sqrt(fan_in), g)

    return init


def xavier(*, distribution: Distribution = "normal", gain: Gain = 1.0) -> WeightInit:
    """Glorot & Bengio's init; gain 1 as in their paper and torch's default, `auto` for the act's."""
    resolve = _gain(gain)

    def init(w: torch.Tensor, act_gain: float, g: torch.Generator) -> None:
        fan_in, fan_out = fans(w)
        _draw(w, distribution, resolve(act_gain) * math.sqrt(2.0 / (fan_in + fan_out)), g)

    return init


def kaiming(
    *,
    distribution: Distribution = "normal",
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    gain: Gain = "auto",
) -> WeightInit:
    """He et al.'s init: std = gain/√fan; `auto` takes the activation's gain (leaky slope included)."""
    resolve = _gain(gain)

    def init(w: torch.Tensor, act_gain: float, g: torch.Generator) -> None:
        fan_in, fan_out = fans(w)
        fan = fan_in if mode == "fan_in" else fan_out
        _draw(w, distribution, resolve(act_gain) / math.sqrt(fan), g)

    return init


def orthogonal(*, gain: Gain = 1.0) -> WeightInit:
    resolve = _gain(gain)
    return lambda w, act_gain, g: nn.init.orthogonal_(w, resolve(act_gain), generator=g)


def default() -> WeightInit:
    """PyTorch's own nn.Linear reset: kaiming_uniform_(a=√5), i.e. U(±1/√fan_in)."""
    return lambda w, act_gain, g: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)


def trunc_normal(*, std: PositiveFloat = 0.02, cutoff: PositiveFloat = 2.0) -> WeightInit:
    """N(0, std²) truncated at ±cutoff·std (timm/BERT style std 0.02)."""
    bound = cutoff * std
    return lambda w, act_gain, g: nn.init.trunc_normal_(w, 0.0, std, -bound, bound, g)


INITS: dict[str, Callable[..., WeightInit]] = {
    "randn": randn,
    "zeros": zeros,
    "constant": constant,
    "uniform": uniform,
    "normal": normal,
    "lecun": lecun,
    "xavier": xavier,
    "kaiming": kaiming,
    "orthogonal": orthogonal,
    "default": default,
    "trunc_normal": trunc_normal,
}


def bias_zeros() -> BiasInit:
    return lambda b, fan_in, g: nn.init.zeros_(b)


def bias_constant(*, value: float = 0.0) -> BiasInit:
    return lambda b, fan_in, g: nn.init.constant_(b, value)


def bias_normal(*, std: PositiveFloat = 0.05) -> BiasInit:
    return lambda b, fan_in, g: nn.init.normal_(b, 0.0, std, generator=g)


def bias_uniform(*, low: float = -0.05, high: float = 0.05) -> BiasInit:
    if not low < high:
        raise ConfigError(f"uniform needs low < high, got low={low}, high={high}")
    return lambda b, fan_in, g: nn.init.uniform_(b, low, high, generator=g)


def bias_default() -> BiasInit:
    """PyTorch's nn.Linear bias reset: U(±1/√fan_in)."""

    def init(b: torch.Tensor, fan_in: int, g: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(b, -bound, bound, generator=g)

    return init


BIAS_INITS: dict[str, Callable[..., BiasInit]] = {
    "zeros": bias_zeros,
    "constant": bias_constant,
    "normal": bias_normal,
    "uniform": bias_uniform,
    "default": bias_default,
}


def make_init(name: str,
              params: dict | None = None) -> WeightInit | StructuralInit | DataInit:
    """The registered init `name` (per-weight, structural or data-dependent) built with `params`
    (validated against its signature)."""
    _, factory, params = entry(ALL_INITS, name, "init", params)
    return factory(**dict(parameters_model(factory).model_validate(params)))


def make_bias_init(name: str, params: dict | None = None) -> BiasInit:
    _, factory, params = entry(BIAS_INITS, name, "bias init", params)
    return factory(**dict(parameters_model(factory).model_validate(params)))


# ----------------------------------------------------------------------------------------------
# structural inits: the draw depends on where a Linear sits in a residual model


@dataclass(frozen=True)
class Role:
    """Where a Linear sits: `input` (the residual model's first layer), `branch` (layer `index`
    of the `branch_depth` = m Linear layers of a residual branch, one of `blocks` = L branches),
    `head` (the last layer), or `plain` (a Linear of a model without residual blocks)."""

    kind: Literal["input", "branch", "head", "plain"]
    index: int = 0
    branch_depth: int = 0
    blocks: int = 0

    @property
    def last_of_branch(self) -> bool:
        return self.kind == "branch" and self.index == self.branch_depth


# (weight, its role, gain of the run's activation, generator): fills the weight in place
RoleInit = Callable[[torch.Tensor, Role, float, torch.Generator], object]


def _zeroes_nothing(role: Role) -> bool:
    return False


@dataclass(frozen=True)
class StructuralInit:
    """An init that needs the model's structure: `initialise` gives each Linear's weight its
    `Role`, sets every bias to 0 (the bias init is not used) and, where `multiplier` is not
    None, every residual block's α to it. `needs_residual`: refused at config time for a model
    without residual blocks; `needs_multiplier`: the blocks get an α even where
    model.multiplier is unset. `zeroes`: the roles whose weights `weight` sets to exactly 0 on
    purpose (fixup's branch last layers and head), which the analysis reads as by design, not
    as a failure (a multiplier of 0 is deliberate too: rezero)."""

    weight: RoleInit
    multiplier: float | None = None
    needs_residual: bool = True
    needs_multiplier: bool = False
    zeroes: Callable[[Role], bool] = _zeroes_nothing


def _he(w: torch.Tensor, act_gain: float, g: torch.Generator, scale: float = 1.0) -> None:
    fan_in, _ = fans(w)
    nn.init.normal_(w, 0.0, scale * act_gain / math.sqrt(fan_in), generator=g)


def fixup() -> StructuralInit:
    """Fixup (Zhang, Dauphin & Ma 2019, Sec. 3, "Fixup initialization"): with L residual
    branches of m layers each, the branch's last layer and the head start at 0, every other
    branch layer is He-initialised (N(0, gain²/fan_in), gain the activation's) and scaled by
    L^(-1/(2m-2)); the input layer is He-initialised unscaled. With m = 1 there is no layer to
    scale: the branch is its zeroed last layer. Fixup's scalar biases start at 0, as every Linear
    bias here does (no extra scalar biases are added); its scalar multiplier starts at 1 (the
    block's α, when model.multiplier is set)."""

    def init(w: torch.Tensor, role: Role, act_gain: float, g: torch.Generator) -> None:
        if _fixup_zeroes(role):
            nn.init.zeros_(w)
        elif role.kind == "branch":
            _he(w, act_gain, g, role.blocks ** (-1.0 / (2 * role.branch_depth - 2)))
        else:
            _he(w, act_gain, g)

    return StructuralInit(init, multiplier=1.0, zeroes=_fixup_zeroes)


def _fixup_zeroes(role: Role) -> bool:
    """Fixup's zeros: each branch's last layer and the head."""
    return role.kind == "head" or role.last_of_branch


def rezero() -> StructuralInit:
    """ReZero (Bachlechner et al. 2020) / SkipInit (De & Smith 2020): every residual block's
    multiplier α starts at 0, so each block starts as the identity; the weights are
    He-initialised (N(0, gain²/fan_in)). It gives every block an α where model.multiplier is
    unset, and starts a configured one at 0 too."""
    return StructuralInit(lambda w, role, act_gain, g: _he(w, act_gain, g), multiplier=0.0,
                          needs_multiplier=True)


def gpt2(*, std: PositiveFloat = 0.02) -> StructuralInit:
    """GPT-2 (Radford et al. 2019, Sec. 2.3; nanoGPT's `c_proj` init): every weight N(0, std²),
    std 0.02, except each residual branch's output projection (its last Linear), which is
    N(0, (std/√(2L))²) for L residual blocks; biases 0. (nanoGPT's 2·n_layer counts the two
    residual layers of each transformer block; here L is the number of branches, as asked of
    this init, so by the paper's 1/√N count of residual layers it is 1/√2 smaller.)"""

    def init(w: torch.Tensor, role: Role, act_gain: float, g: torch.Generator) -> None:
        scale = 1.0 / math.sqrt(2 * role.blocks) if role.last_of_branch else 1.0
        nn.init.normal_(w, 0.0, std * scale, generator=g)

    return StructuralInit(init)


def bert(*, std: PositiveFloat = 0.02) -> StructuralInit:
    """BERT / Hugging Face `_init_weights` (Devlin et al. 2019; transformers'
    BertPreTrainedModel): every Linear weight N(0, initializer_range²), initializer_range
    (`std`) 0.02, biases 0, norm layers weight 1 and bias 0. Any model: it uses no structure."""
    return StructuralInit(lambda w, role, act_gain, g: nn.init.normal_(w, 0.0, std, generator=g),
                          needs_residual=False)


RESIDUAL_INITS: dict[str, Callable[..., StructuralInit]] = {
    "fixup": fixup,
    "rezero": rezero,
    "gpt2": gpt2,
    "bert": bert,
}


# ----------------------------------------------------------------------------------------------
# data-dependent inits: the batch sets the scale


@dataclass(frozen=True)
class DataInit:
    """An init that needs the batch (lsuv). As a `WeightInit` it draws the start, an orthogonal
    matrix of gain 1 (so `initialise` and `reinitialise` take it as any per-weight init); the
    pipeline then runs actstat/lsuv.py's `scale_on_batch` on the initialised model. Every bias
    starts at 0 (giving `init.bias` is an error): the batch re-centres it."""

    tolerance: float
    max_iterations: int

    def __call__(self, weight: torch.Tensor, act_gain: float, g: torch.Generator) -> None:
        nn.init.orthogonal_(weight, 1.0, generator=g)


def lsuv(*, tolerance: PositiveFloat = 0.1, max_iterations: PositiveInt = 10) -> DataInit:
    """Layer-sequential unit-variance init (Mishkin & Matas, "All you need is a good init",
    ICLR 2016, Algorithm 1): every weight layer starts orthogonal (Saxe et al. 2014), then, in
    the order the forward pass runs them, each layer's output on the batch is brought to std 1:
    while |std - 1| >= `tolerance` (and, for a layer with a bias, |mean| >= `tolerance`), and
    at most `max_iterations` times, W <- W / std and b <- (b - each unit's mean) / std.

    Defaults are the paper's: Tol_var 0.1 and T_max 10 (Sec. 2; it states the tolerance on
    the variance, where |var - 1| < 0.1 is |std - 1| < about 0.05; the std is what the report's
    tables show, so the tolerance applies to it). The bias re-centring is actstat's: the
    paper's networks start their biases at 0 and leave them; re-centring makes every unit's
    mean 0 on the batch as well. Mean and std are over all the layer's output values
    (population std, as the tables' pre mean and pre std)."""
    return DataInit(tolerance, max_iterations)


DATA_INITS: dict[str, Callable[..., DataInit]] = {
    "lsuv": lsuv,
}

# every name --init takes: the per-weight inits, the structural ones and the data-dependent one
ALL_INITS: dict[str, Callable[..., WeightInit | StructuralInit | DataInit]] = {
    **INITS, **RESIDUAL_INITS, **DATA_INITS}
