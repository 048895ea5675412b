"""Expectations: what mean-field theory (actstat/theory.py) expects of each row of the built-in
models, from their actual parameters, attached to the measured rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from actstat.activations import Activation
from actstat.model import (
    NORMS,
    ResidualMLP,
    hidden_linears,
    parameter_variances,
)
from actstat.records import (
    LayerStats,
    Theory,
    finite_or_none,
)
from actstat.theory import (
    Expected,
    expected,
    expected_normed_mlp,
    expected_residual,
    phase,
)


def mlp_expectations(model: torch.nn.Module, activation: Activation,
            input_second_moment: float) -> tuple[list[Expected | None], Theory]:
    """Mean-field expectations per hidden layer from the model's actual parameters, and the
    phase of the deep layers (the last hidden layer's σ_w², σ_b²)."""
    linears = hidden_linears(model)
    variances = parameter_variances(model, linears)
    sigma_w2 = [w2 for w2, _ in variances]
    sigma_b2 = [b2 for _, b2 in variances]
    layers = expected(activation, sigma_w2, sigma_b2, input_second_moment)
    last = layers[-1].pre_std
    found = phase(activation, sigma_w2[-1], sigma_b2[-1], last**2 if last is not None else math.inf)
    return list(layers), Theory(finite_or_none(found.chi1), finite_or_none(found.q_star),
                                found.phase)


def with_expected(layer: LayerStats, expected_here: Expected | None) -> LayerStats:
    if expected_here is None:
        return layer
    return with_row_expected(layer, (expected_here.pre_std, expected_here.post_mean,
                                        expected_here.post_std))


# what a row expects: (pre std, post mean, post std), None where the theory gives no number
RowExpected = tuple[float | None, float | None, float | None]


def block_expectations(model: torch.nn.Module, activation: Activation,
                       input_second_moment: float) -> dict[str, RowExpected]:
    """Mean-field expectations of `build_blocks`'s model, by row name, from its actual
    parameters: `expected_residual` for residual blocks (input layer, each branch layer, the
    norm's output, the stream), `expected_normed_mlp` for a plain MLP with norms. The head has
    none, as in the MLP: its num_classes units are too few for a wide-limit expectation (one
    draw of 10 rows of W reads the stream's mean direction differently every seed). Empty where
    the model's blocks have different multipliers (the residual map takes one α)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    variances = parameter_variances(model, linears)
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    norm = _norm_name(norms[0]) if norms else "none"
    eps = _norm_eps(norms[0]) if norms else 1e-5
    batch_statistics = model.training
    rows: dict[str, RowExpected] = {}
    if isinstance(model, ResidualMLP):
        blocks = list(model.blocks)
        alphas = {b.multiplier.item() for b in blocks if b.initial_multiplier is not None}
        if len(alphas) > 1:
            return {}
        alpha = alphas.pop() if alphas else 1.0
        pre = norm != "none" and blocks[0].pre
        branch_depth = sum(isinstance(x, torch.nn.Linear) for x in blocks[0].branch)
        per_block = [variances[1 + i * branch_depth:1 + (i + 1) * branch_depth]
                     for i in range(len(blocks))]
        found = expected_residual(activation, input_second_moment, variances[0], per_block,
                                  alpha=alpha, norm=norm,
                                  norm_position="pre" if pre or norm == "none" else "post",
                                  eps=eps, batch_statistics=batch_statistics)
        first = found.input_layer
        rows["inp"] = (first.pre_std, first.post_mean, first.post_std)
        for i, block in enumerate(found.blocks):
            if norm != "none":
                normed = block.branch_inputs[0] if pre else block.stream
                rows[f"blocks.{i}.norm"] = (None, normed.mean, normed.std)
            for k, layer in enumerate(block.branch, start=1):
                rows[f"blocks.{i}.branch.fc{k}"] = (layer.pre_std, layer.post_mean,
                                                     layer.post_std)
            if alpha is not None:  # α · branch, added to the stream (its own row)
                last = block.branch[-1]
                rows[f"blocks.{i}:branch"] = (None, alpha * last.post_mean,
                                              abs(alpha) * last.post_std)
            rows[f"blocks.{i}"] = (None, block.stream.mean, block.stream.std)
    else:
        position = _normed_position(model)
        found_layers = expected_normed_mlp(activation, input_second_moment, variances[:-1],
                                           norm=norm, norm_position=position, eps=eps,
                                           batch_statistics=batch_statistics)
        for k, layer in enumerate(found_layers, start=1):
            if position == "pre":  # fc{k}: the Linear alone; norm{k}: the norm, then φ
                rows[f"fc{k}"] = (None, layer.linear.mean, layer.linear.std)
                rows[f"norm{k}"] = (layer.norm.std, layer.activation.mean, layer.activation.std)
            else:  # fc{k}: the Linear, then φ; norm{k}: the norm
                rows[f"fc{k}"] = (layer.linear.std, layer.activation.mean, layer.activation.std)
                rows[f"norm{k}"] = (None, layer.norm.mean, layer.norm.std)
    return rows


def _norm_name(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.LayerNorm):
        return "layernorm"
    if isinstance(module, torch.nn.BatchNorm1d):
        return "batchnorm"
    return "rmsnorm"


def _norm_eps(module: torch.nn.Module) -> float:
    """The norm's ε: RMSNorm's None is its dtype's machine epsilon."""
    eps = getattr(module, "eps", None)
    if eps is None:
        return torch.finfo(next(module.parameters()).dtype).eps
    return float(eps)


def _normed_position(model: torch.nn.Module) -> str:
    """A normed MLP's norm position: 'pre' when norm1 comes before act1 (fc1, norm1, act1)."""
    names = [name for name, _ in model.named_children()]
    return "pre" if names.index("norm1") < names.index("act1") else "post"


def zip_named(layers: Sequence[LayerStats],
               found: dict[str, RowExpected]) -> list[tuple[LayerStats, RowExpected | None]]:
    return [(layer, found.get(layer.name)) for layer in layers]


def with_row_expected(layer: LayerStats, found: RowExpected | None) -> LayerStats:
    """A row with its expectation: pre std where the row has a pre, post mean and std."""
    if found is None:
        return layer
    pre_std, post_mean, post_std = found
    pre = layer.pre
    if pre is not None and pre_std is not None:
        pre = replace(pre, expected_std=pre_std)
    return replace(layer, pre=pre,
                   post=replace(layer.post, expected_mean=post_mean, expected_std=post_std))
