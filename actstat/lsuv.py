"""LSUV's data-dependent step: each weight layer's output on the batch scaled to std 1, in order.

The init itself (its parameters, defaults and sources) is `lsuv` in actstat/inits.py; this module
is the part that needs the model and the batch: it runs after `initialise` or `reinitialise` has
drawn the orthogonal start. It sits apart from inits.py because it runs inside the measurement
engine's pass (actstat/capture.py's Probe), which finds the weight layers as every command does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from actstat.capture import CHANNEL_TYPES, Probe, first_tensor
from actstat.errors import InitError, ModelError
from actstat.inits import DataInit
from actstat.records import LsuvLayer


def scale_on_batch(model: nn.Module, inputs: Any, init: DataInit, *,
                   seed: int = 0) -> tuple[LsuvLayer, ...]:
    """Mishkin & Matas' Algorithm 1 on `model`, whose weights hold the orthogonal start: each
    weight layer (capture's `is_weight_layer`, with a weight Parameter), in the order the forward
    pass on `inputs` first calls it, has its output's mean and std over all values measured
    (float64, population std); while |std - 1| >= tolerance (or, with a bias, |mean| >=
    tolerance) and fewer than `max_iterations` updates were made, its weight is divided by the
    std and its bias set to (bias - each unit's mean) / std (the unit: a feature map's channel,
    dim 1, else the last dim), and its output computed again.

    One forward pass does it all: a hook scales each layer when it first runs, on the input the
    layers before it (already scaled) gave it, and hands the scaled output on, which is what a
    fresh pass per iteration, as the paper's algorithm reads, would compute (the same batch each
    time; the layers after it cannot change its input; a dropout before it, in train mode, keeps
    the one mask it drew). A weight shared by two layers (tied embeddings) is scaled at each,
    so the first one's record is of the weight before the second scaled it. The pass runs
    without gradients in the mode the model is in, the mode it is then measured in (a user's
    model in train mode: BatchNorm on the batch's statistics), with torch's generator seeded
    with `seed` for any dropout (the caller's generator state restored); buffers (BatchNorm's
    running statistics) are put back as they were.

    One record per layer (name, updates made, final std and mean, whether they met the
    tolerance). An InitError names the first layer whose output has std 0 (an all-zero input, a
    dead layer before it: nothing to scale) or is not finite."""
    records: dict[nn.Module, LsuvLayer] = {}

    def step(module: nn.Module, name: str, out: torch.Tensor,
             again: Callable[[], Any]) -> torch.Tensor:
        if module in records or not isinstance(getattr(module, "weight", None), nn.Parameter):
            return out  # a second call (shared weights) runs as scaled at its first
        where = f"weight layer {len(records) + 1} ({name}, {type(module).__name__})"
        scaled, records[module] = _scale_layer(module, name, where, out, again, init)
        return scaled

    # the engine finds the weight layers and runs `step` on each one's output as it comes
    probe = Probe(model, None, grad=False, bins=0, near_zero=0.0, saturation_cut=1.0,
                  weights=False, weight_step=step)
    first = first_tensor(inputs)
    devices = [first.device] if first is not None and first.device.type == "cuda" else []
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), probe.hooks(inputs):
            torch.manual_seed(seed)
            _forward(probe, inputs)
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return tuple(records.values())


def _scale_layer(module: nn.Module, name: str, where: str, out: torch.Tensor,
                 again: Callable[[], Any], init: DataInit) -> tuple[torch.Tensor, LsuvLayer]:
    """The layer's output once scaled (`again` computes it afresh), and its record; `where`
    names the layer in an error (its place in forward order, as the MLP's tables number it)."""
    unit = 1 if isinstance(module, CHANNEL_TYPES) else -1
    bias = getattr(module, "bias", None)
    if not (isinstance(bias, torch.Tensor) and out.dim() >= 1
            and bias.numel() == out.shape[unit]):
        bias = None  # no bias, or one that is not per unit: the mean is left as it is
    updates = 0
    while True:
        values = out.detach().double()
        std, mean = torch.stack(torch.std_mean(values, correction=0)).tolist()
        if not (math.isfinite(std) and math.isfinite(mean)):
            raise InitError(f"lsuv: {where} gives non-finite "
                            f"values on the batch (std {std:g}, mean {mean:g}), so it cannot be "
                            "scaled to std 1; check the input for NaN or huge values")
        if std == 0:
            raise InitError(f"lsuv: {where} gives the same value "
                            "for every input of the batch (std 0), so it cannot be scaled to "
                            "std 1: the input is constant (all zeros?) or a layer before it is "
                            "dead")
        converged = abs(std - 1.0) < init.tolerance and (bias is None
                                                          or abs(mean) < init.tolerance)
        if converged or updates == init.max_iterations:
            return out, LsuvLayer(name, updates, std, mean, converged)
        if bias is not None:
            # every unit's mean, over the batch and any positions
            unit_mean = values.movedim(unit, -1).reshape(-1, values.shape[unit]).mean(0)
            bias.sub_(unit_mean.reshape(bias.shape).to(bias.dtype)).div_(std)
        module.weight.div_(std)
        updates += 1
        out = first_tensor(again())


def _forward(probe: Probe, inputs: Any) -> Any:
    try:
        return probe.forward(inputs)
    except ModelError as error:
        raise ModelError(f"lsuv: {error}") from error
