"""Plan: the schemes a config runs, how many side by side, and whether they fit in memory."""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from typing import Any

import torch

from actstat.config import (
    ActivationSpec,
    Config,
    InitSpec,
    ModelConfig,
)
from actstat.errors import ActstatError
from actstat.memory import available_memory as host_available_memory


def schemes(config: Config) -> list[tuple[InitSpec, ActivationSpec]]:
    """Every (init, activation) of the grid, inits outer, in config order; then the compare list.
    A user's model (model.factory) runs its own activations: one scheme per init, each paired
    with the default ActivationSpec, which is not used."""
    if config.model.factory is not None:
        return [(init, ActivationSpec()) for init in config.init]
    grid = list(product(config.init, config.activation))
    return grid + [(scheme.init, scheme.activation) for scheme in config.compare]


# called after each scheme with (schemes done, schemes in all, the scheme's label)
Progress = Callable[[int, int, str], None]


def memory_needed(config: Config, in_features: int, element_bytes: int) -> dict[str, int]:
    """Bytes one scheme needs at its peak, by part (a stack of K schemes needs K times the
    activations and its own copy of the weights: `stack_size` keeps stacks within free memory).

    weights: every Linear's weight and bias (twice with gradients: .grad mirrors them; once more
    for the training probe's snapshot). activations: without gradients, about four tensors of
    the widest layer at a time (output, the probe's scaled copy and mask, the next input); with
    gradients, autograd also keeps every layer's pre- and post-activation for the backward pass.
    data: the batch.
    """
    widths = config.model.widths
    fans = list(zip([in_features, *widths], [*widths, config.model.num_classes]))
    weights = sum(fan_in * fan_out + fan_out for fan_in, fan_out in fans) * element_bytes
    weights *= (2 if config.grad else 1) + (1 if config.train.steps else 0)
    batch = config.data.batch_size
    widest = max([in_features, *widths])
    activations = 4 * batch * widest * element_bytes
    if config.grad:
        activations += 2 * batch * sum(widths) * element_bytes
    return {"weights": weights, "activations": activations,
            "data": batch * in_features * element_bytes}


def available_memory(device: torch.device) -> int | None:
    """Free memory on the device: CUDA's free bytes, or the host's available memory within its
    container's limit (actstat/memory.py); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_available_memory()


# refuse a run that needs more than this share of the free memory
MEMORY_HEADROOM = 0.9


def preflight(config: Config, in_features: int, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before allocating the models, a run that cannot fit in the device's free memory."""
    needed = memory_needed(config, in_features, torch.finfo(dtype).bits // 8)
    total = sum(needed.values())
    free = available_memory(device)
    if free is None or total <= MEMORY_HEADROOM * free:
        return
    parts = ", ".join(f"{name} {size / 2**30:.1f}" for name, size in needed.items())
    raise ActstatError(
        f"this run needs about {total / 2**30:.1f} GiB ({parts}) but {device} has "
        f"{free / 2**30:.1f} GiB free; lower the depth, width or batch size, use --no-grad, "
        "or pass --force to try anyway")


def model_preflight(label: str, parameters: int, device: torch.device, dtype: torch.dtype, *,
                    copies: int, keys: list[str] = ()) -> None:
    """Refuse, before it is built, a model whose parameters (`copies` of them: the weights, their
    gradients, an optimiser's state) cannot fit in the device's free memory: a model by name
    counts its parameters from its config (actstat/hf.py), so a stock 7-billion-parameter
    configuration is refused in a second rather than after minutes of drawing weights. It is
    built in float32 first, on the host. The activations of the batch are not counted: a batch
    too large fails in the forward pass (or lower --batch-size)."""
    element = max(torch.finfo(dtype).bits // 8, 4)
    needed = parameters * element * copies
    free = available_memory(device)
    if free is None or needed <= MEMORY_HEADROOM * free:
        return
    smaller = (f"make it smaller with --model-arg ({', '.join(f'{k}=...' for k in keys)})"
               if keys else "make it smaller with --model-arg")
    raise ActstatError(
        f"{label} has {_count(parameters)} parameters, about {needed / 2**30:.1f} GiB "
        f"({copies} × {parameters * element / 2**30:.1f} GiB: the weights"
        + (", their gradients" if copies > 1 else "") + (" and the optimiser's state"
                                                         if copies > 2 else "")
        + f"), but {device} has {free / 2**30:.1f} GiB free; {smaller}, or pass --force to try "
        "anyway")


def _count(n: int) -> str:
    """1.2 B, 124 M, 85 k: a parameter count in words' units."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


# at most this many schemes run side by side: past it the gain is gone and memory is not
MAX_STACK = 16


def stacks(todo: list[tuple[InitSpec, ActivationSpec]], size: int) -> list[list[int]]:
    """Indices of `todo` in groups that can run as one stacked model: schemes with the same
    activation (name and parameters; widths, bias, device and dtype are the config's), at most
    `size` to a group, in order of each group's first scheme."""
    by_activation: dict[str, list[int]] = {}
    for index, (_, act) in enumerate(todo):
        by_activation.setdefault(act.model_dump_json(), []).append(index)
    return [indices[start:start + size] for indices in by_activation.values()
            for start in range(0, len(indices), size)]


def stack_size(config: Config, in_features: int, device: torch.device, dtype: torch.dtype) -> int:
    """How many schemes to run side by side: up to MAX_STACK, fewer where K times one scheme's
    activations and gradients (plus the stacked copy of the weights) would not fit in half of
    the device's free memory."""
    if config.train.steps:
        return 1
    needed = memory_needed(config, in_features, torch.finfo(dtype).bits // 8)
    per_scheme = needed["activations"] + 2 * needed["weights"]  # its model and its stacked copy
    free = available_memory(device)
    if free is None:
        return 1
    return max(1, min(MAX_STACK, int(0.5 * free) // max(per_scheme, 1)))


def train_stack_size(config: Config, in_features: int, device: torch.device,
                     dtype: torch.dtype) -> int:
    """How many schemes `actstat train` trains side by side: up to MAX_STACK, fewer where K
    times one scheme's share would not fit in half of the device's free memory. A scheme's
    share: its weights four or five times (the model it is built as, its stacked copy, the
    gradient, and the optimiser's state: SGD's momentum buffer, Adam's two moments), and the
    activations of a mini-batch that autograd keeps for the backward pass (`memory_needed`'s,
    at train.batch_size)."""
    trained = config.model_copy(update={
        "grad": True, "train": config.train.model_copy(update={"steps": 0}),
        "data": config.data.model_copy(update={"batch_size": config.train.batch_size})})
    needed = memory_needed(trained, in_features, torch.finfo(dtype).bits // 8)
    copies = 3 + (2 if config.train.optimizer == "adam" else 1)
    per_scheme = needed["activations"] + copies * needed["weights"] // 2  # `weights` counts .grad
    free = available_memory(device)
    if free is None:
        return 1
    return max(1, min(MAX_STACK, int(0.5 * free) // max(per_scheme, 1)))


def model_groups(config: Config) -> list[tuple[Config, list[int]]]:
    """The config split by the model each scheme runs: one config per model (the config's own
    first, with its init × activation grid), each with the positions of its schemes in
    `schemes(config)`. Schemes of one model stay together, so the plain MLP's still stack."""
    grid = len(config.init) * len(config.activation)
    groups: dict[str, tuple[ModelConfig, list[Any], list[int]]] = {
        config.model.model_dump_json(): (config.model, [], list(range(grid)))}
    for position, scheme in enumerate(config.compare, start=grid):
        model = config.scheme_model(scheme)
        _, members, positions = groups.setdefault(model.model_dump_json(), (model, [], []))
        members.append(scheme.model_copy(update={"model": None}))
        positions.append(position)
    return [(config.model_copy(update={
                "model": model, "compare": members,
                "init": config.init if model == config.model else [],
                "activation": config.activation if model == config.model else []}), positions)
            for model, members, positions in groups.values() if positions]


def model_tag(model: ModelConfig) -> str:
    """A model's structure in a few words, to tell schemes of a mixed compare apart: `plain`,
    `residual`, `residual, layernorm`, `residual, branch 3, rmsnorm post, α=0.5`."""
    parts = [model.block]
    if model.block == "residual" and \
            model.branch_depth != ModelConfig.model_fields["branch_depth"].default:
        parts.append(f"branch {model.branch_depth}")
    if model.norm != "none":
        parts.append(model.norm + (" post" if model.norm_position == "post" else ""))
    if model.multiplier is not None:
        parts.append(f"α={model.multiplier:g}")
    return ", ".join(parts)
