"""Probe: hooks that reduce every hidden layer's activations and gradients on the device.

The probe knows nothing of the MLP's code: it pairs each nn.Linear with the leaf module that runs
after it (its activation) by module order, so any sequential stack can be profiled. Each forward
hook reduces its tensor to a handful of device scalars at once (the tensor itself is not kept);
with gradients on, it also puts a tensor hook on the pre-activation, which reduces dL/d(pre) when
backward reaches it. Everything a pass measured is copied to the host together, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from actstat.activations import Activation

# the order of the numbers in each reduced vector
MOMENTS = ("mean", "std", "min", "max", "near_zero")
PRE_EXTRA = ("dead", "spread")
POST_EXTRA = ("saturated",)
HIST_BINS = 40  # cells per layer in --hist and in the figures' heat maps
# dL/d(pre): mean, std; dL/dW: std, min, max; W: std
GRAD = ("mean", "std", "weight_std", "weight_min", "weight_max", "weight_data_std")


@dataclass(frozen=True)
class RawLayer:
    """One hidden layer's reduced numbers on the host (definitions: actstat/analysis.py)."""

    fan_in: int
    fan_out: int
    pre: dict[str, float]
    post: dict[str, float]
    grad: dict[str, float] | None  # None: measured without a backward pass
    histogram: list[float] | None = None  # post counts in HIST_BINS bins over [min, max]


@dataclass(frozen=True)
class Measurement:
    """One pass: every hidden layer's numbers, and the loss when there was a backward pass."""

    layers: list[RawLayer]
    loss: float | None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of every backward pass: mean cross-entropy, computed in at least float32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels)


def hidden_blocks(model: nn.Module) -> list[tuple[nn.Linear, nn.Module]]:
    """(Linear, activation) pairs in forward order; a Linear followed by no activation (the
    classification head) is not a hidden layer."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    return [(m, after) for m, after in zip(leaves, leaves[1:])
            if isinstance(m, nn.Linear) and not isinstance(after, nn.Linear)]


def count_fraction(mask: torch.Tensor) -> torch.Tensor:
    """The fraction of ones in a 0/1 float tensor (from an in-place comparison).

    Summing 0/1 floats is several times faster than summing a bool tensor (which accumulates in
    int64); float32 sums of integers are exact below 2**24 elements, so larger tensors (and
    half-precision ones, whose own sum would overflow at 65504) accumulate in float64/float32.
    """
    dtype = torch.float64 if mask.numel() > 2**24 or mask.dtype == torch.float64 else torch.float32
    return mask.sum(dtype=dtype) / mask.numel()


def moments(x: torch.Tensor, near_zero: float) -> list[torch.Tensor]:
    """[mean, std, min, max, near-zero fraction] of all values of `x`, as device scalars.

    Two passes over a copy scaled by max|x|: the scaling keeps the sum of squares finite for any
    finite input (a float32 net at 1e20 still reports its std), and subtracting the mean before
    squaring avoids the cancellation of E[x²] - E[x]². Half-precision tensors are reduced in
    float32. `aminmax`, `sum` and `dot` each cost a fraction of `std_mean`, and the near-zero
    count sums a float mask (benchmarks/run.py measures all of it).
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
    near = count_fraction(exact(flat).abs().lt_(near_zero)).to(acc)
    return [mean * scale, std * scale, lo.to(acc), hi.to(acc), near]


def histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of `x` in `bins` equal bins over [lo, hi] (the last bin closed, as np.histogram),
    in float64. Built with scatter_add on the device: torch.histc would need the range on the
    host, a sync per layer. A constant tensor puts everything in the first bin."""
    flat = exact(x).reshape(-1)
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi)).to(flat.dtype)
    index = (flat - lo.to(flat.dtype)).mul_(bins / width).floor_().clamp_(0, bins - 1)
    index = torch.nan_to_num(index, nan=0.0).long()
    counts = torch.zeros(bins, dtype=torch.float64, device=x.device)
    return counts.scatter_add_(0, index, torch.ones_like(index, dtype=torch.float64))


def exact(x: torch.Tensor) -> torch.Tensor:
    """`x` in a dtype where thresholds like 0.01 and 0.97 are what they say: half-precision
    tensors are compared in float32 (bfloat16 would round 0.97 to 0.96875)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _Reducer:
    """The two hook bodies for one layer; the reduced scalars are stored, nothing else."""

    def __init__(self, activation: Activation, near_zero: float, saturation_cut: float,
                 bins: int = 0):
        self.activation = activation
        self.near_zero = near_zero
        self.edges = activation.saturation_edges(saturation_cut)
        self.bins = bins

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        stats = moments(x, self.near_zero)
        acc = stats[0].dtype
        x2 = x.reshape(x.shape[0], -1)
        if self.activation.dead_below is None:
            dead = torch.zeros((), dtype=acc, device=x.device)
        else:
            # per-unit maxima over the batch: a unit is dead when even its largest input is flat
            dead = count_fraction(x2.amax(dim=0).le_(self.activation.dead_below)).to(acc)
        # the largest range across units on one sample, relative to max|x| (0: all identical)
        scale = torch.maximum(stats[2].abs(), stats[3].abs())
        gap = (x2.amax(dim=1) - x2.amin(dim=1)).amax().to(acc)
        spread = torch.where(scale > 0, gap / scale, torch.zeros_like(gap))
        return torch.stack([*stats, dead, spread]).to(torch.float64)

    def post(self, x: torch.Tensor) -> torch.Tensor:
        stats = moments(x, self.near_zero)
        acc = stats[0].dtype
        saturated = torch.zeros((), dtype=acc, device=x.device)
        x = exact(x)
        if self.edges is not None:
            lo, hi = self.edges
            if lo is not None and hi is not None:  # one pass: |x - mid| >= half-width
                mid, half = (lo + hi) / 2, (hi - lo) / 2
                saturated = count_fraction(torch.sub(x, mid).abs_().ge_(half)).to(acc)
            elif lo is not None:
                saturated = count_fraction(torch.sub(lo, x).ge_(0)).to(acc)
            elif hi is not None:
                saturated = count_fraction(torch.sub(x, hi).ge_(0)).to(acc)
        row = torch.stack([*stats, saturated]).to(torch.float64)
        if self.bins:
            row = torch.cat([row, histogram(x, stats[2], stats[3], self.bins)])
        return row

    @staticmethod
    def grad(g: torch.Tensor) -> torch.Tensor:
        mean, std, *_ = moments(g, 0.0)
        return torch.stack([mean, std]).to(torch.float64)


@contextmanager
def _hooks(blocks: list[tuple[nn.Linear, nn.Module]], reducer: _Reducer,
           store: dict[tuple[int, str], torch.Tensor], grad: bool) -> Iterator[None]:
    """Forward hooks on every block (and, with `grad`, a gradient hook on each pre-activation),
    removed on the way out whatever happens. Tensor hooks die with their tensors."""
    handles = []

    def on_pre(i: int, out: torch.Tensor) -> None:
        with torch.no_grad():
            store[i, "pre"] = reducer.pre(out.detach())
        if grad and out.requires_grad:
            out.register_hook(lambda g: store.__setitem__((i, "grad"), reducer.grad(g)))

    def on_post(i: int, out: torch.Tensor) -> None:
        with torch.no_grad():
            store[i, "post"] = reducer.post(out.detach())

    try:
        for i, (linear, activation) in enumerate(blocks):
            handles.append(linear.register_forward_hook(
                lambda module, args, out, i=i: on_pre(i, out)))
            handles.append(activation.register_forward_hook(
                lambda module, args, out, i=i: on_post(i, out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def measure(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
            activation: Activation, near_zero: float, saturation_cut: float,
            bins: int = 0) -> Measurement:
    """One forward pass, and with `labels` one backward pass of the mean cross-entropy of the
    model's logits (no optimiser step; gradients are left in `.grad`). Without labels the pass
    runs in inference mode: no autograd graph, no activation kept beyond its layer. Every
    statistic reaches the host in one copy."""
    blocks = hidden_blocks(model)
    grad = labels is not None
    reducer = _Reducer(activation, near_zero, saturation_cut, bins)
    store: dict[tuple[int, str], torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad() if grad else torch.inference_mode(), \
                _hooks(blocks, reducer, store, grad):
            logits = model(inputs)
            loss = None
            if grad:
                model.zero_grad(set_to_none=True)
                loss = cross_entropy(logits, labels)
                loss.backward()
            with torch.no_grad() if grad else nullcontext():
                rows = [_row(i, linear, store, grad) for i, (linear, _) in enumerate(blocks)]
                flat = torch.cat(rows + ([loss.detach().to(torch.float64).reshape(1)] if grad
                                         else [])) if rows else torch.zeros(0)
                host = flat.tolist()
    finally:
        model.train(was_training)
    widths = [len(MOMENTS + PRE_EXTRA), len(MOMENTS + POST_EXTRA), bins, len(GRAD) if grad else 0]
    layers = []
    for i, (linear, _) in enumerate(blocks):
        row = host[i * sum(widths):(i + 1) * sum(widths)]
        parts, start = [], 0
        for width in widths:
            parts.append(row[start:start + width])
            start += width
        pre, post, counts, grads = parts
        layers.append(RawLayer(
            fan_in=linear.in_features,
            fan_out=linear.out_features,
            pre=dict(zip(MOMENTS + PRE_EXTRA, pre)),
            post=dict(zip(MOMENTS + POST_EXTRA, post)),
            grad=dict(zip(GRAD, grads)) if grad else None,
            histogram=counts if bins else None,
        ))
    return Measurement(layers, host[-1] if grad and blocks else None)


def _row(i: int, linear: nn.Linear, store: dict[tuple[int, str], torch.Tensor],
         grad: bool) -> torch.Tensor:
    parts = [store[i, "pre"], store[i, "post"]]
    if grad:
        # a pre-activation that backward never reached (no path to the loss) has zero gradient
        pre_grad = store.get((i, "grad"), torch.zeros(2, dtype=torch.float64,
                                                      device=parts[0].device))
        weight_grad = linear.weight.grad
        if weight_grad is None:
            weight_grad = torch.zeros_like(linear.weight)
        _, g_std, g_min, g_max, _ = moments(weight_grad, 0.0)
        w_std = moments(linear.weight.detach(), 0.0)[1]
        parts += [pre_grad, torch.stack([g_std, g_min, g_max, w_std]).to(torch.float64)]
    return torch.cat(parts)
