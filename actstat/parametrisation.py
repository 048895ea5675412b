"""Parametrisation: how a built-in model's init, multipliers and per-layer learning rates scale
with its width: PyTorch's standard parameterisation (SP) and μP, for `actstat coord-check`.

μP is the Maximal Update Parametrization of Tensor Programs V (Yang, Hu et al., "Tuning Large
Neural Networks via Zero-Shot Hyperparameter Transfer", 2022). Its Table 3 gives each kind of
parameter's init variance and SGD and Adam learning rates as powers of its fan-in and fan-out
(`TABLE_3`, with SP's entries, the table's grey parentheses, beside them). actstat applies it in
the form the authors' `mup` package implements (`MUP`: `MuReadout`, `MuAdam`, `MuSGD`), relative
to a base width: with r = width / base, hidden weights keep SP's init and their Adam learning
rate is divided by r; input weights and every bias or gain with a width dimension take SGD's
learning rate × r; the readout multiplies its input by 1/r (`model.ReadoutLinear`), starts at
zero (the package's `readout_zero_init`) and takes SGD's learning rate × r. At the base width
μP is SP but for the zero readout. A parameter's kind is found as the package finds it (its
`make_base_shapes`): the dimensions of its shape that differ between the model at two widths
are the ones that grow with width.

tests/test_parametrisation.py checks `MUP` against `TABLE_3` entry by entry (a multiplier m on a
weight w is the table's θ = m·w: Var θ = m² Var w, Adam's step on θ is m × w's, SGD's m² ×).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actstat.errors import ConfigError
from actstat.model import ReadoutLinear

PARAMS = ("sp", "mup")
# kinds of parameter, by the dimensions of their shape that grow with width
KINDS = ("input", "hidden", "output", "vector", "fixed")

# Tensor Programs V, Table 3 (μP, and SP in the table's parentheses): each entry is
# fan_in**p × fan_out**q, given as (p, q), times the base hyperparameter (η, or 1 for the init
# variance). "input" is the table's "input weights & all biases" column.
TABLE_3: dict[str, dict[str, dict[str, tuple[int, int]]]] = {
    "mup": {
        "input": {"init_var": (-1, 0), "sgd_lr": (0, 1), "adam_lr": (0, 0)},
        "output": {"init_var": (-2, 0), "sgd_lr": (-1, 0), "adam_lr": (-1, 0)},
        "hidden": {"init_var": (-1, 0), "sgd_lr": (0, 0), "adam_lr": (-1, 0)},
    },
    "sp": {
        "input": {"init_var": (-1, 0), "sgd_lr": (0, 0), "adam_lr": (0, 0)},
        "output": {"init_var": (-1, 0), "sgd_lr": (0, 0), "adam_lr": (0, 0)},
        "hidden": {"init_var": (-1, 0), "sgd_lr": (0, 0), "adam_lr": (0, 0)},
    },
}


@dataclass(frozen=True)
class Scaling:
    """One kind of parameter under a parametrisation, as powers of r = width / base:
    `multiplier` on the layer's input (the readout's), the SGD and Adam learning rates; its
    init SP's (1 / fan_in variance, the scheme's init) unless `zero_init`."""

    multiplier: int = 0
    sgd_lr: int = 0
    adam_lr: int = 0
    zero_init: bool = False


# the mup package's form of Table 3 (MuReadout, MuSGD, MuAdam; readout_zero_init)
MUP: dict[str, Scaling] = {
    "input": Scaling(sgd_lr=1),  # MuSGD: a vector-like parameter's lr × width_mult
    "vector": Scaling(sgd_lr=1),  # biases and norm gains of width units, as input weights
    "hidden": Scaling(adam_lr=-1),  # MuAdam: a matrix-like parameter's lr / width_mult
    "output": Scaling(multiplier=-1, sgd_lr=1, zero_init=True),  # MuReadout
    "fixed": Scaling(),  # no dimension grows: the readout's bias, a residual α
}
SP: dict[str, Scaling] = {kind: Scaling() for kind in KINDS}
RULES = {"sp": SP, "mup": MUP}


def kind_of(small: Sequence[int], large: Sequence[int]) -> str:
    """A parameter's kind from its shape at two widths (nn.Linear's (out, in) layout): which of
    its dimensions grow."""
    if len(small) != len(large):
        raise ConfigError(f"a parameter's shape changes rank with width: {tuple(small)} and "
                          f"{tuple(large)}")
    grows = [a != b for a, b in zip(small, large)]
    if len(grows) >= 2:
        out_grows, in_grows = grows[0], grows[1]
        if out_grows and in_grows:
            return "hidden"
        if in_grows:
            return "output"
        if out_grows:
            return "input"
        return "fixed"
    return "vector" if any(grows) else "fixed"


def kinds(small: Mapping[str, Sequence[int]], large: Mapping[str, Sequence[int]]
          ) -> dict[str, str]:
    """Every parameter's kind, by name, from the model's parameter shapes at two widths."""
    if list(small) != list(large):
        raise ConfigError("the model's parameters differ by name between two widths: "
                          "a width must change sizes only")
    return {name: kind_of(small[name], large[name]) for name in small}


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def apply(model: nn.Module, param: str, kinds_by_name: Mapping[str, str], ratio: float) -> None:
    """Make `model` (initialised by its scheme, as SP) `param`'s at width ratio r = width /
    base: each output (readout) weight's Linear becomes a ReadoutLinear with multiplier r**m,
    its weight and bias set to zero where the rule says. Nothing changes under SP."""
    rules = RULES[param]
    readouts = {name.rsplit(".", 1)[0] for name, kind in kinds_by_name.items()
                if kind == "output" and name.endswith("weight")}
    for path in readouts:
        scaling = rules["output"]
        if scaling.multiplier == 0 and not scaling.zero_init:
            continue
        parent, _, leaf = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = owner.get_submodule(leaf)
        if not isinstance(old, nn.Linear):
            raise ConfigError(f"{path}: μP's readout must be an nn.Linear, not "
                              f"{type(old).__name__}")
        new = ReadoutLinear(old.in_features, old.out_features, bias=old.bias is not None,
                            multiplier=ratio ** scaling.multiplier, device=old.weight.device,
                            dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(torch.zeros_like(old.weight) if scaling.zero_init else old.weight)
            if old.bias is not None:
                new.bias.copy_(torch.zeros_like(old.bias) if scaling.zero_init else old.bias)
        new.train(old.training)
        setattr(owner, leaf, new)


def learning_rates(param: str, optimizer: str, kinds_in_order: Sequence[str], lr: float,
                   ratio: float) -> list[float]:
    """Each parameter's learning rate, in `model.parameters()` order: `lr` × r**(its kind's
    power for `optimizer`)."""
    rules = RULES[param]
    power = "adam_lr" if optimizer == "adam" else "sgd_lr"
    return [lr * ratio ** getattr(rules[kind], power) for kind in kinds_in_order]


def param_groups(parameters: Sequence[nn.Parameter], rates: Sequence[float]
                 ) -> list[dict[str, Any]]:
    """One optimiser group per learning rate, parameters in their order."""
    if len(parameters) != len(rates):
        raise ConfigError("the model's parameters and their learning rates do not pair up")
    groups: dict[float, list[nn.Parameter]] = {}
    for p, rate in zip(parameters, rates):
        groups.setdefault(rate, []).append(p)
    return [{"params": ps, "lr": rate} for rate, ps in groups.items()]
