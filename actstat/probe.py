"""Probe: forward hooks that reduce every hidden layer's pre- and post-activation on the device.

The probe knows nothing of the MLP's code: it pairs each nn.Linear with the leaf module that runs
after it (its activation) by module order, so any sequential stack can be profiled. Each hook
reduces its tensor to a handful of device scalars at once (the tensor itself is not kept); all of
them are copied to the host together, once per pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from actstat.activations import Activation

# the order of the numbers in each reduced vector
MOMENTS = ("mean", "std", "min", "max", "near_zero")
PRE_EXTRA = ("dead", "spread")
POST_EXTRA = ("saturated",)


@dataclass(frozen=True)
class RawLayer:
    """One hidden layer's reduced numbers on the host (definitions: actstat/analysis.py)."""

    fan_in: int
    fan_out: int
    pre: dict[str, float]
    post: dict[str, float]


def hidden_blocks(model: nn.Module) -> list[tuple[nn.Linear, nn.Module]]:
    """(Linear, activation) pairs in forward order; a Linear followed by no activation (the
    classification head) is not a hidden layer."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    return [(m, after) for m, after in zip(leaves, leaves[1:])
            if isinstance(m, nn.Linear) and not isinstance(after, nn.Linear)]


def moments(x: torch.Tensor, near_zero: float) -> list[torch.Tensor]:
    """[mean, std, min, max, near-zero fraction] of all values of `x`, as device scalars.

    Two passes over a copy scaled by max|x|: the scaling keeps the sum of squares finite for any
    finite input (a float32 net at 1e20 still reports its std), and subtracting the mean before
    squaring avoids the cancellation of E[x²] - E[x]². Half-precision tensors are reduced in
    float32. `aminmax`, `sum` and `dot` each cost a fraction of `std_mean` (see benchmarks/).
    """
    flat = x.reshape(-1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    lo, hi = torch.aminmax(flat)
    scale = torch.maximum(lo.abs(), hi.abs()).to(acc)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    y = flat.to(acc) / scale
    mean = y.mean()
    y.sub_(mean)
    std = torch.sqrt(torch.dot(y, y) / flat.numel())
    near = (flat.abs() < near_zero).sum().to(acc) / flat.numel()
    return [mean * scale, std * scale, lo.to(acc), hi.to(acc), near]


class _Reducer:
    """The two hook bodies for one layer; the reduced scalars are stored, nothing else."""

    def __init__(self, activation: Activation, near_zero: float, saturation_cut: float):
        self.activation = activation
        self.near_zero = near_zero
        self.edges = activation.saturation_edges(saturation_cut)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        stats = moments(x, self.near_zero)
        acc = stats[0].dtype
        x2 = x.reshape(x.shape[0], -1)
        if self.activation.dead_below is None:
            dead = torch.zeros((), dtype=acc, device=x.device)
        else:
            dead = (x2.amax(dim=0) <= self.activation.dead_below).sum().to(acc) / x2.shape[1]
        # largest gap between a unit and unit 0 on the same sample, relative to max|x|
        scale = torch.maximum(stats[2].abs(), stats[3].abs())
        gap = (x2 - x2[:, :1]).abs().amax().to(acc)
        spread = torch.where(scale > 0, gap / scale, torch.zeros_like(gap))
        return torch.stack([*stats, dead, spread]).to(torch.float64)

    def post(self, x: torch.Tensor) -> torch.Tensor:
        stats = moments(x, self.near_zero)
        acc = stats[0].dtype
        saturated = torch.zeros((), dtype=torch.int64, device=x.device)
        if self.edges is not None:
            lo, hi = self.edges
            if lo is not None:
                saturated = saturated + (x <= lo).sum()
            if hi is not None:
                saturated = saturated + (x >= hi).sum()
        return torch.stack([*stats, saturated.to(acc) / x.numel()]).to(torch.float64)


@contextmanager
def _hooks(blocks: list[tuple[nn.Linear, nn.Module]], reducer: _Reducer,
           store: dict[tuple[int, str], torch.Tensor]) -> Iterator[None]:
    """Forward hooks on every block, removed on the way out whatever happens."""
    handles = []
    try:
        for i, (linear, activation) in enumerate(blocks):
            handles.append(linear.register_forward_hook(
                lambda module, args, out, i=i: store.__setitem__((i, "pre"), reducer.pre(out))))
            handles.append(activation.register_forward_hook(
                lambda module, args, out, i=i: store.__setitem__((i, "post"), reducer.post(out))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def measure(model: nn.Module, inputs: torch.Tensor, *, activation: Activation, near_zero: float,
            saturation_cut: float) -> list[RawLayer]:
    """One forward pass without autograd; every statistic reaches the host in one copy."""
    blocks = hidden_blocks(model)
    reducer = _Reducer(activation, near_zero, saturation_cut)
    store: dict[tuple[int, str], torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _hooks(blocks, reducer, store):
            model(inputs)
            rows = [torch.cat([store[i, "pre"], store[i, "post"]]) for i in range(len(blocks))]
            host = torch.stack(rows).tolist() if rows else []
    finally:
        model.train(was_training)
    n_pre = len(MOMENTS) + len(PRE_EXTRA)
    return [
        RawLayer(
            fan_in=linear.in_features,
            fan_out=linear.out_features,
            pre=dict(zip(MOMENTS + PRE_EXTRA, row[:n_pre])),
            post=dict(zip(MOMENTS + POST_EXTRA, row[n_pre:])),
        )
        for (linear, _), row in zip(blocks, host)
    ]
