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
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from actstat.activations import make_activation
from actstat.errors import ConfigError
from actstat.registry import entry, parameters_model

PositiveFloat = Annotated[float, Field(gt=0)]
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


def make_init(name: str, params: dict | None = None) -> WeightInit:
    """The registered weight init `name` built with `params` (validated against its signature)."""
    _, factory, params = entry(INITS, name, "init", params)
    return factory(**dict(parameters_model(factory).model_validate(params)))


def make_bias_init(name: str, params: dict | None = None) -> BiasInit:
    _, factory, params = entry(BIAS_INITS, name, "bias init", params)
    return factory(**dict(parameters_model(factory).model_validate(params)))
