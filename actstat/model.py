"""Model: the MLP that a Config describes, initialised by a scheme, on a device."""

from __future__ import annotations

import torch
from torch import nn

from actstat.activations import Activation
from actstat.inits import BiasInit, WeightInit


def build_mlp(*, in_features: int, widths: list[int], num_classes: int, bias: bool,
              activation: Activation) -> nn.Sequential:
    """Linear -> activation, once per hidden width, then a linear head of `num_classes` logits.

    Built on the meta device: parameters get storage only when `initialise` fills them, so
    nn.Linear's own reset (a wasted pass over every weight) never runs.
    """
    layers: list[nn.Module] = []
    fan_in = in_features
    for width in widths:
        layers += [nn.Linear(fan_in, width, bias=bias, device="meta"), activation.module()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes, bias=bias, device="meta"))
    return nn.Sequential(*layers)


def parameter_variances(model: nn.Module, linears: list[nn.Linear]) -> list[tuple[float, float]]:
    """(σ_w², σ_b²) = (fan_in · Var(W), Var(b)) of each Linear, population variances in float64,
    fetched in one copy (σ_b² is 0 without a bias)."""
    values = []
    for linear in linears:
        w = linear.weight.detach().to(torch.float64)
        values.append(w.var(correction=0) * linear.in_features)
        values.append(linear.bias.detach().to(torch.float64).var(correction=0)
                      if linear.bias is not None else torch.zeros((), dtype=torch.float64,
                                                                   device=w.device))
    host = torch.stack(values).tolist() if values else []
    return list(zip(host[0::2], host[1::2]))


def initialise(model: nn.Module, weight_init: WeightInit, bias_init: BiasInit, *, act_gain: float,
               seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Fill every Linear (the head too) in module order from one CPU generator seeded with `seed`,
    then move the model: the same seed gives the same weights on every device and dtype."""
    _materialise(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                weight_init(module.weight, act_gain, g)
                if module.bias is not None:
                    bias_init(module.bias, module.in_features, g)
    return model.to(device=device, dtype=dtype).eval()


def _materialise(model: nn.Module) -> None:
    """Give every meta parameter uninitialised CPU storage of its shape. (`Module.to_empty` does
    the same but imports torch's symbolic-shapes machinery, sympy included: 0.4 s at start-up.)"""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                               requires_grad=param.requires_grad))
