"""Activation registry: name -> factory of an `Activation` (module, init gain, dead and saturation rules)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from actstat.registry import entry, parameters_model

PositiveFloat = Annotated[float, Field(gt=0)]


@dataclass(frozen=True)
class Activation:
    """One activation function and what the measurement needs to know about it.

    `gain` is the init gain for this activation (`gain: auto` in an init uses it): the value of
    `torch.nn.init.calculate_gain` where torch defines one (relu √2, leaky_relu √(2/(1+slope²)),
    tanh 5/3, sigmoid 1, selu 3/4, identity 1). Where torch has none (gelu, silu, elu, softplus,
    mish) it is the second-moment rule 1/√E[φ(z)²], z ~ N(0, 1), which is exactly how torch's relu
    and leaky_relu gains arise: a layer with Var(W) = gain²/fan_in then keeps E[x²] for unit
    Gaussian pre-activations.

    `dead_below`: the pre-activation edge of the activation's lower flat region (a unit whose
    pre-activation is <= this for every sample has a constant output and zero gradient), and
    `floor`: the output value there (0 for relu, -0.5 for relu - 0.5). Only activations with
    an exactly flat lower region have them (relu; general_relu without leak); for the others
    both are None and no unit can die. The measurement counts a unit dead from the output alone
    (actstat/analysis.py: it sits at `floor` for every sample); `dead_below` serves the theory.

    `kinks`: pre-activation values where φ or φ' jumps (numerical integrals split there).
    `gaussian`: where a closed form exists, q -> (E[φ(√q z)], E[φ(√q z)²], E[φ'(√q z)²]) for
    z ~ N(0, 1), used by the mean-field theory (actstat/theory.py) instead of quadrature.

    `lower`, `upper`, `scale`: the ends of the activation's range (None: unbounded on that side)
    and the width that the saturation margin is measured in: a value is saturated when it lies
    within (1 - cut) * scale of an end, so with the default cut 0.97 tanh is saturated beyond
    |t| > 0.97 and sigmoid outside (0.015, 0.985). A hard clamp (general_relu's clamp_max) has
    scale 0: saturated means clamped.
    """

    name: str
    module: Callable[[], nn.Module]
    gain: float
    dead_below: float | None = None
    floor: float | None = None
    lower: float | None = None
    upper: float | None = None
    scale: float = 1.0
    kinks: tuple[float, ...] = ()
    gaussian: Callable[[float], tuple[float, float, float]] | None = None

    def saturation_edges(self, cut: float) -> tuple[float | None, float | None] | None:
        """(lo, hi): a post-activation value <= lo or >= hi is saturated; None if unbounded."""
        if self.lower is None and self.upper is None:
            return None
        margin = (1.0 - cut) * self.scale
        lo = None if self.lower is None else self.lower + margin
        hi = None if self.upper is None else self.upper - margin
        return lo, hi


@cache
def hermite_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights (an eigenvalue problem: computed once per size)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    x.flags.writeable = w.flags.writeable = False
    return x, w


def second_moment_gain(module: nn.Module, nodes: int = 201) -> float:
    """1/√E[φ(z)²] for z ~ N(0, 1), by Gauss–Hermite quadrature (accurate to ~1e-6 for these φ)."""
    x, w = hermite_rule(nodes)
    z = torch.from_numpy(math.sqrt(2.0) * x)
    with torch.no_grad():
        phi = module(z).numpy()
    second_moment = float(np.sum(w * phi**2) / math.sqrt(math.pi))
    return 1.0 / math.sqrt(second_moment)


class GeneralRelu(nn.Module):
    """fastai's GeneralRelu: leaky ReLU, minus a constant, optionally clamped from above."""

    def __init__(self, leak: float = 0.0, subtract: float = 0.0, clamp_max: float | None = None):
        super().__init__()
        self.leak, self.subtract, self.clamp_max = leak, subtract, clamp_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.leaky_relu(x, self.leak) if self.leak else nn.functional.relu(x)
        if self.subtract:
            x = x - self.subtract
        if self.clamp_max is not None:
            x = x.clamp_max(self.clamp_max)
        return x

    def extra_repr(self) -> str:
        return f"leak={self.leak}, subtract={self.subtract}, clamp_max={self.clamp_max}"


def _leaky_gain(slope: float) -> float:
    return math.sqrt(2.0 / (1.0 + slope**2))


def _leaky_gaussian(slope: float, subtract: float = 0.0) -> Callable[[float], tuple[float, ...]]:
    """Closed forms for φ(y) = leaky(y) - subtract, y ~ N(0, q): E[relu(y)] = √q/√(2π),
    E[relu(y)²] = q/2, and the negative half mirrored with the slope."""

    def moments(q: float) -> tuple[float, float, float]:
        half_mean = math.sqrt(q / (2 * math.pi))
        mean = (1 - slope) * half_mean
        second = q * (1 + slope**2) / 2
        return (mean - subtract, second - 2 * subtract * mean + subtract**2,
                (1 + slope**2) / 2)

    return moments


def relu() -> Activation:
    return Activation("relu", nn.ReLU, math.sqrt(2.0), dead_below=0.0, floor=0.0, kinks=(0.0,),
                      gaussian=_leaky_gaussian(0.0))


def leaky_relu(*, negative_slope: float = 0.01) -> Activation:
    return Activation("leaky_relu", lambda: nn.LeakyReLU(negative_slope),
                      _leaky_gain(negative_slope), kinks=(0.0,),
                      gaussian=_leaky_gaussian(negative_slope))


def general_relu(
    *, leak: float = 0.0, subtract: float = 0.0, clamp_max: float | None = None
) -> Activation:
    """The lesson's "ReLU minus 0.5" is general_relu(subtract=0.5); the gain is leaky_relu's."""
    kinks: tuple[float, ...] = (0.0,)
    if clamp_max is not None:
        # where leaky(y) - subtract reaches the clamp
        edge = clamp_max + subtract
        kinks += (edge if edge >= 0 or not leak else edge / leak,)
    return Activation(
        "general_relu",
        lambda: GeneralRelu(leak, subtract, clamp_max),
        _leaky_gain(leak),
        dead_below=0.0 if leak == 0 else None,
        floor=_floor(subtract, clamp_max) if leak == 0 else None,
        upper=clamp_max,
        scale=0.0,
        kinks=tuple(sorted(set(kinks))),
        gaussian=_leaky_gaussian(leak, subtract) if clamp_max is None else None,
    )


def _floor(subtract: float, clamp_max: float | None) -> float:
    """relu(y) - subtract, clamped from above at clamp_max: its value where y <= 0."""
    return -subtract if clamp_max is None else min(-subtract, clamp_max)


def tanh() -> Activation:
    return Activation("tanh", nn.Tanh, 5.0 / 3.0, lower=-1.0, upper=1.0, scale=1.0)


def sigmoid() -> Activation:
    return Activation("sigmoid", nn.Sigmoid, 1.0, lower=0.0, upper=1.0, scale=0.5)


def gelu(*, approximate: Literal["none", "tanh"] = "none") -> Activation:
    make = lambda: nn.GELU(approximate=approximate)  # noqa: E731
    return Activation("gelu", make, second_moment_gain(make()))


def silu() -> Activation:
    return Activation("silu", nn.SiLU, second_moment_gain(nn.SiLU()))


def selu() -> Activation:
    # SELU's negative asymptote is -scale*alpha of torch's constants
    floor = 1.0507009873554805 * 1.6732632423543772
    return Activation("selu", nn.SELU, 0.75, lower=-floor, scale=floor, kinks=(0.0,))


def elu(*, alpha: PositiveFloat = 1.0) -> Activation:
    make = lambda: nn.ELU(alpha)  # noqa: E731
    return Activation("elu", make, second_moment_gain(make()), lower=-alpha, scale=alpha,
                      kinks=(0.0,))


def softplus(*, beta: PositiveFloat = 1.0) -> Activation:
    make = lambda: nn.Softplus(beta)  # noqa: E731
    return Activation("softplus", make, second_moment_gain(make()), lower=0.0, scale=1.0 / beta)


def mish() -> Activation:
    return Activation("mish", nn.Mish, second_moment_gain(nn.Mish()))


class Identity(nn.Module):
    """The identity as an activation: φ(x) = x. Not torch's nn.Identity, which models use as a
    placeholder and the measurement hands on (a pass-through): this one is the activation of
    its layer, so the built-in MLP's rows read `Linear → Identity` with pre and post."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def identity() -> Activation:
    return Activation("identity", Identity, 1.0, gaussian=lambda q: (0.0, q, 1.0))


ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "relu": relu,
    "leaky_relu": leaky_relu,
    "general_relu": general_relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "gelu": gelu,
    "silu": silu,
    "selu": selu,
    "elu": elu,
    "softplus": softplus,
    "mish": mish,
    "identity": identity,
}


def describe(module: nn.Module) -> Activation | None:
    """What the measurement needs to know of an activation module met in any model: its flat
    region's `floor` (the dead rule) and its range (the saturation rule), or None for a module
    it does not know (whose dead units are those exactly 0 throughout: actstat/analysis.py).

    The registry's own modules and torch's elementwise activations are known; those without a
    flat lower region (tanh, gelu, leaky relu, ...) come back with `floor` None: no unit of
    theirs can die. Hard clamps are described as general_relu's clamp is (scale 0: saturated =
    clamped); a hard clamp's lower end is also its flat region (relu6, hardtanh,
    hardsigmoid: a unit held there for every sample has no gradient: dead). Gains are not
    used here: 1.0 stands in where the registry has no entry.
    """
    if isinstance(module, GeneralRelu):
        return general_relu(leak=module.leak, subtract=module.subtract,
                            clamp_max=module.clamp_max)
    if isinstance(module, nn.ReLU):
        return relu()
    if isinstance(module, nn.ReLU6):
        return Activation("relu6", lambda: module, 1.0, floor=0.0, upper=6.0, scale=0.0)
    if isinstance(module, nn.Hardtanh):  # (ReLU6 is one: handled above)
        return Activation("hardtanh", lambda: module, 1.0, floor=module.min_val,
                          lower=module.min_val, upper=module.max_val, scale=0.0)
    if isinstance(module, nn.Hardsigmoid):
        return Activation("hardsigmoid", lambda: module, 1.0, floor=0.0, lower=0.0, upper=1.0,
                          scale=0.0)
    if isinstance(module, nn.Tanh):
        return tanh()
    if isinstance(module, nn.Sigmoid):
        return sigmoid()
    if isinstance(module, nn.SELU):
        return selu()
    if isinstance(module, nn.ELU):
        return Activation("elu", lambda: module, 1.0, lower=-module.alpha, scale=module.alpha)
    if isinstance(module, nn.Softplus):
        return Activation("softplus", lambda: module, 1.0, lower=0.0, scale=1.0 / module.beta)
    if isinstance(module, UNBOUNDED_SMOOTH):
        return Activation(type(module).__name__.lower(), lambda: module, 1.0)
    return None


# torch's activations with neither a flat region nor a bounded range
UNBOUNDED_SMOOTH: tuple[type[nn.Module], ...] = (
    nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.GELU, nn.SiLU, nn.Mish, nn.CELU, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity, Identity)


def make_activation(name: str, params: dict | None = None) -> Activation:
    """The registered activation `name` built with `params` (validated against its signature)."""
    _, factory, params = entry(ACTIVATIONS, name, "activation", params)
    checked = parameters_model(factory).model_validate(params)
    return factory(**dict(checked))
