"""Probe: hooks that reduce every hidden layer's activations and gradients on the device.

The probe knows nothing of the MLP's code: it pairs each nn.Linear with the leaf module that runs
after it (its activation) by module order, so any sequential stack can be profiled. Each forward
hook reduces its tensor to a handful of device scalars at once (the tensor itself is not kept);
with gradients on, it also puts a tensor hook on the pre-activation, which reduces dL/d(pre) when
backward reaches it. Everything a pass measured is copied to the host together, once. A float32
CPU tensor is reduced by actstat/fused.py's C kernel where it was built, whose numbers are host
floats from the start (`_Reducer`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from actstat import fused
from actstat.activations import Activation
from actstat.model import LINEAR, StackedLinear

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


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
    """The loss of every backward pass: cross-entropy (mean over the batch unless `reduction`
    says otherwise), computed in at least float32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels, reduction=reduction)


def hidden_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(Linear, activation) pairs in forward order; a Linear followed by no activation (the
    classification head) is not a hidden layer. A StackedLinear counts as a Linear."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    return [(m, after) for m, after in zip(leaves, leaves[1:])
            if isinstance(m, LINEAR) and not isinstance(after, LINEAR)]


def count_fraction(mask: torch.Tensor) -> torch.Tensor:
    """The fraction of ones in each group (row of the leading dimension) of a 0/1 float tensor
    from an in-place comparison: a (K, ...) mask gives K fractions.

    Summing 0/1 floats is several times faster than summing a bool tensor (which accumulates in
    int64); float32 sums of integers are exact below 2**24 elements, so larger groups (and
    half-precision masks, whose own sum would overflow at 65504) accumulate in float64/float32.
    """
    rows = mask.reshape(mask.shape[0], -1)
    size = rows.shape[1]
    dtype = torch.float64 if size > 2**24 or mask.dtype == torch.float64 else torch.float32
    return rows.sum(dim=1, dtype=dtype) / size


def moments(x: torch.Tensor, near_zero: float,
            scratch: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[mean, std, min, max, near-zero fraction] of all values of `x`, as device scalars."""
    return [stat[0] for stat in group_moments(x.unsqueeze(0), near_zero, scratch)]


def group_moments(x: torch.Tensor, near_zero: float, scratch: torch.Tensor | None = None,
                  extremes: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """[mean, std, min, max, near-zero fraction] of each group x[k] of a (K, ...) tensor, as
    device vectors of K values.

    Two passes over a copy scaled by each group's max|x|: the scaling keeps the sum of squares
    finite for any finite input (a float32 net at 1e20 still reports its std), and subtracting
    the mean before squaring avoids the cancellation of E[x²] - E[x]². Half-precision tensors are
    reduced in float32. Every reduction is a sum, a min or a max along one dimension, each a
    fraction of `std_mean`'s cost. Sums of squares are squared in place and summed, not taken by
    `torch.dot`: torch's sum adds in a cascade, while BLAS dot (and gemm, and vector_norm) runs
    float32 accumulators that were 1.2e-4 off on the MNIST batch's std (many equal pixels); the
    near-zero count sums a float mask. The scaled copy
    and the mask go to `scratch` (a buffer of at least x.numel() elements in the accumulation
    dtype) when given: reusing one buffer keeps every pass free of allocations, whose fresh
    pages the OS would otherwise fault in each time (benchmarks/run.py measures all of it).
    `extremes`: each group's (min, max) when the caller already has them (a pass saved).
    """
    flat = x.reshape(x.shape[0], -1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    lo, hi = extremes if extremes is not None else (flat.amin(dim=1), flat.amax(dim=1))
    mean, std, y = _mean_std(flat, lo, hi, scratch)
    near = count_fraction(torch.abs(exact(flat), out=y).lt_(near_zero)).to(acc)
    return [mean, std, lo.to(acc), hi.to(acc), near]


def group_mean_std(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[mean, std] of each group x[k] whose (min, max) are (lo[k], hi[k]): `group_moments`'s
    own arithmetic, without its near-zero count (for a caller that records the std alone)."""
    mean, std, _ = _mean_std(x.reshape(x.shape[0], -1), lo, hi, scratch)
    return mean, std


def _mean_std(flat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
              scratch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """group_moments' two passes over a scaled copy of the (K, n) `flat`; the copy comes back
    too, for the near-zero mask to overwrite."""
    acc = torch.float64 if flat.dtype == torch.float64 else torch.float32
    # max|x|, kept off 0 (an all-zero group divides to zeros) and off inf (a non-finite group
    # is reported as such: its mean and std come out NaN, like its min or max)
    scale = torch.maximum(lo.abs(), hi.abs()).to(acc).clamp_(torch.finfo(acc).tiny,
                                                              torch.finfo(acc).max)
    if scratch is not None and flat.dtype == acc:
        y = torch.div(flat, scale[:, None], out=scratch[:flat.numel()].view_as(flat))
    else:
        y = flat.to(acc) / scale[:, None]
    mean = y.mean(dim=1)
    std = torch.sqrt(y.sub_(mean[:, None]).square_().mean(dim=1))
    return mean * scale, std * scale, y


def unit_spread(sample_lo: torch.Tensor, sample_hi: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor) -> torch.Tensor:
    """The `symmetric` flag's statistic (actstat/analysis.py) of each group: the largest range
    across units on one sample, relative to the group's max|x| (0: every unit computes the same
    value; an all-zero group counts as 0). `sample_lo`, `sample_hi`: (K, samples) extremes across
    units of each sample (or sample and position); `lo`, `hi`: the (K,) group extremes, in the
    accumulation dtype the result takes."""
    scale = torch.maximum(lo.abs(), hi.abs())
    gap = (sample_hi - sample_lo).amax(dim=1).to(scale.dtype)
    return torch.where(scale > 0, gap / scale, torch.zeros_like(gap))


def histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of `x` in `bins` equal bins over [lo, hi] (the last bin closed, as np.histogram),
    in float64. Built with scatter_add on the device: torch.histc would need the range on the
    host, a sync per layer. A constant tensor puts everything in the first bin."""
    return group_histogram(x.unsqueeze(0), lo.reshape(1), hi.reshape(1), bins)[0]


def group_histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    bins: int) -> torch.Tensor:
    """(K, bins) counts: each group x[k] binned over its own [lo[k], hi[k]] (see `histogram`)."""
    flat = exact(x).reshape(x.shape[0], -1)
    lo, hi = lo.to(flat.dtype)[:, None], hi.to(flat.dtype)[:, None]
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    index = (flat - lo).mul_(bins / width).floor_().clamp_(0, bins - 1)
    index = torch.nan_to_num(index, nan=0.0).long()
    index += torch.arange(flat.shape[0], device=x.device)[:, None] * bins
    counts = torch.zeros(flat.shape[0] * bins, dtype=torch.float64, device=x.device)
    counts.scatter_add_(0, index.reshape(-1), torch.ones(index.numel(), dtype=torch.float64,
                                                         device=x.device))
    return counts.view(flat.shape[0], bins)


def saturated_fraction(x: torch.Tensor, edges: tuple[float | None, float | None],
                       work: torch.Tensor) -> torch.Tensor:
    """The fraction of each group x[k] of a (K, ...) float32/float64 tensor at or beyond the
    saturation edges (lo, hi) of `Activation.saturation_edges` (None: unbounded on that side),
    computed in `work`, a buffer shaped like `x`. A (K,) vector; zeros when both edges are None."""
    lo, hi = edges
    if lo is not None and hi is not None:  # one pass: |x - mid| >= half-width
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        return count_fraction(torch.sub(x, mid, out=work).abs_().ge_(half))
    if lo is not None:
        return count_fraction(torch.sub(lo, x, out=work).ge_(0))
    if hi is not None:
        return count_fraction(torch.sub(x, hi, out=work).ge_(0))
    return torch.zeros(x.shape[0], dtype=work.dtype, device=x.device)


def exact(x: torch.Tensor) -> torch.Tensor:
    """`x` in a dtype where thresholds like 0.01 and 0.97 are what they say: half-precision
    tensors are compared in float32 (bfloat16 would round 0.97 to 0.96875)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class Scratch:
    """One buffer per pass, grown to the largest tensor seen, in the accumulation dtype of the
    tensor asked for: `scratch(x)` is x.numel() elements of it for `group_moments` and the masks
    (no large allocation per layer; see group_moments)."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        buffer = self._buffer
        if (buffer is None or buffer.numel() < x.numel() or buffer.dtype != acc
                or buffer.device != x.device):
            buffer = self._buffer = torch.empty(x.numel(), dtype=acc, device=x.device)
        return buffer[:x.numel()]


# a hook's (K, n) numbers: a float64 device tensor, or the C kernel's host floats
Rows = torch.Tensor | list[list[float]]


class _Reducer:
    """The hook bodies for one pass. Each takes a (K, batch, units) tensor (K models side by
    side; K = 1 for one model) and returns its (K, n) reduced numbers (`Rows`); one scratch
    buffer, grown to the largest tensor seen, serves every reduction of the pass.
    A float32 CPU tensor is reduced by actstat/fused.py's C kernel where it was built (the
    same numbers to float rounding, each group in one read), and its numbers stay Python
    floats until the pass ends: a small tensor kept per layer is carved by malloc out of the
    large blocks the layer just freed, which the next layer then cannot reuse (peak memory
    grew 16 MiB a layer at width 1024, batch 2048). Everything else is reduced by torch."""

    def __init__(self, activation: Activation, near_zero: float, saturation_cut: float,
                 bins: int = 0):
        self.activation = activation
        self.near_zero = near_zero
        self.edges = activation.saturation_edges(saturation_cut)
        self.bins = bins
        self.scratch = Scratch()

    def pre(self, x: torch.Tensor) -> Rows:
        dead_below = self.activation.dead_below
        rows = fused.reduce_groups(x, near_zero=self.near_zero, spread=True,
                                   units=dead_below is not None, dead_below=dead_below)
        if rows is not None:
            count = x[0].numel()
            return [[mean, std, lo, hi, small / count, dead if dead_below is not None else 0.0,
                     fused.relative_gap(lo, hi, gap)]
                    for mean, std, lo, hi, small, _, gap, dead in rows]
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        # each sample's extremes across units: their range is the spread, their extremes the
        # tensor's (so the moments need no min/max pass of their own)
        sample_lo, sample_hi = x3.amin(dim=2), x3.amax(dim=2)
        stats = group_moments(x, self.near_zero, self.scratch(x),
                              extremes=(sample_lo.amin(dim=1), sample_hi.amax(dim=1)))
        acc = stats[0].dtype
        spread = unit_spread(sample_lo, sample_hi, stats[2], stats[3])
        if self.activation.dead_below is None:
            dead = torch.zeros_like(stats[0])
        else:
            # per-unit maxima over the batch: a unit is dead when even its largest input is flat
            dead = count_fraction(x3.amax(dim=1).le_(self.activation.dead_below)).to(acc)
        return torch.stack([*stats, dead, spread], dim=1).to(torch.float64)

    def post(self, x: torch.Tensor) -> Rows:
        rows = fused.reduce_groups(x, near_zero=self.near_zero, edges=self.edges, units=False)
        if rows is not None:
            count = x[0].numel()
            numbers = [[mean, std, lo, hi, small / count,
                        saturated / count if self.edges is not None else 0.0]
                       for mean, std, lo, hi, small, saturated, *_ in rows]
            if self.bins:
                lo, hi = (torch.tensor([row[c] for row in numbers], dtype=x.dtype) for c in (2, 3))
                counts = group_histogram(x, lo, hi, self.bins).tolist()  # a CPU tensor's
                numbers = [row + hist for row, hist in zip(numbers, counts)]
            return numbers
        scratch = self.scratch(x)
        stats = group_moments(x, self.near_zero, scratch)
        acc = stats[0].dtype
        saturated = torch.zeros_like(stats[0])
        x = exact(x)
        if self.edges is not None:
            saturated = saturated_fraction(x, self.edges, scratch.view_as(x))
        row = torch.stack([*stats, saturated.to(acc)], dim=1).to(torch.float64)
        if self.bins:
            row = torch.cat([row, group_histogram(x, stats[2], stats[3], self.bins)], dim=1)
        return row

    def grad(self, g: torch.Tensor) -> Rows:
        rows = fused.reduce_groups(g, near_zero=0.0, units=False)
        if rows is not None:
            return [list(row[:2]) for row in rows]
        mean, std, *_ = group_moments(g, 0.0, self.scratch(g))
        return torch.stack([mean, std], dim=1).to(torch.float64)


@contextmanager
def _hooks(blocks: list[tuple[nn.Module, nn.Module]], reducer: _Reducer,
           store: dict[tuple[int, str], torch.Tensor], grad: bool,
           grouped: bool) -> Iterator[None]:
    """Forward hooks on every block (and, with `grad`, a gradient hook on each pre-activation),
    removed on the way out whatever happens. Tensor hooks die with their tensors. A single
    model's (batch, units) tensors are reduced as one group."""
    handles = []

    def groups(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if grouped else t.detach().unsqueeze(0)

    def on_pre(i: int, out: torch.Tensor) -> None:
        with torch.no_grad():
            store[i, "pre"] = reducer.pre(groups(out))
        if grad and out.requires_grad:
            out.register_hook(lambda g: store.__setitem__((i, "grad"), reducer.grad(groups(g))))

    def on_post(i: int, out: torch.Tensor) -> None:
        with torch.no_grad():
            store[i, "post"] = reducer.post(groups(out))

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
    return _measure(model, inputs, labels, groups=0, activation=activation, near_zero=near_zero,
                    saturation_cut=saturation_cut, bins=bins)[0]


def measure_stacked(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                    *, activation: Activation, near_zero: float, saturation_cut: float,
                    bins: int = 0) -> list[Measurement]:
    """`measure` for K models run side by side as one (see actstat.model.stack_mlps): one
    Measurement per model, in stack order, with the numbers that K separate passes give (to
    float rounding: a batched matmul sums in its own order). The loss backward is the sum of the
    K models' mean cross-entropies, whose gradient for each model's parameters is that model's
    own. Still one host copy for the whole stack."""
    groups = next(m for m in model.modules() if isinstance(m, StackedLinear)).weight.shape[0]
    return _measure(model, inputs, labels, groups=groups, activation=activation,
                    near_zero=near_zero, saturation_cut=saturation_cut, bins=bins)


def _measure(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None, *, groups: int,
             activation: Activation, near_zero: float, saturation_cut: float,
             bins: int) -> list[Measurement]:
    """groups: 0 for one model, K for a stack of K."""
    blocks = hidden_blocks(model)
    grad = labels is not None
    reducer = _Reducer(activation, near_zero, saturation_cut, bins)
    store: dict[tuple[int, str], Rows] = {}
    k = max(groups, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad() if grad else torch.inference_mode(), \
                _hooks(blocks, reducer, store, grad, grouped=groups > 0):
            logits = model(inputs)
            losses = None
            if grad:
                model.zero_grad(set_to_none=True)
                losses = _losses(logits if groups else logits.unsqueeze(0), labels)
                losses.sum().backward()
            with torch.no_grad() if grad else nullcontext():
                rows = [_row(i, linear, store, grad, grouped=groups > 0, reducer=reducer)
                        for i, (linear, _) in enumerate(blocks)]
                if grad:
                    rows.append(losses.detach().to(torch.float64)[:, None])
                host = torch.cat(rows, dim=1).tolist() if rows else [[] for _ in range(k)]
    finally:
        model.train(was_training)
    widths = [len(MOMENTS + PRE_EXTRA), len(MOMENTS + POST_EXTRA), bins, len(GRAD) if grad else 0]
    return [_unpack(values, blocks, widths, grad, bins) for values in host]


def _losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each group's mean cross-entropy, for (K, batch, classes) logits: a (K,) vector."""
    k, batch = logits.shape[:2]
    per_sample = cross_entropy(logits.reshape(k * batch, -1), labels.repeat(k), reduction="none")
    return per_sample.view(k, batch).mean(dim=1)


def _unpack(row: list[float], blocks: list[tuple[nn.Module, nn.Module]], widths: list[int],
            grad: bool, bins: int) -> Measurement:
    layers = []
    for i, (linear, _) in enumerate(blocks):
        values = row[i * sum(widths):(i + 1) * sum(widths)]
        parts, start = [], 0
        for width in widths:
            parts.append(values[start:start + width])
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
    return Measurement(layers, row[-1] if grad and blocks else None)


def _row(i: int, linear: nn.Module, store: dict[tuple[int, str], Rows], grad: bool,
         grouped: bool, reducer: _Reducer) -> torch.Tensor:
    """Layer i's (K, n) numbers: pre, post (with histogram), and with `grad` the gradients."""
    device = linear.weight.device
    parts = [torch.as_tensor(store[i, part], dtype=torch.float64, device=device)
             for part in ("pre", "post")]
    if grad:
        k = parts[0].shape[0]
        # a pre-activation that backward never reached (no path to the loss) has zero gradient
        pre_grad = torch.as_tensor(store.get((i, "grad"), [[0.0, 0.0]] * k),
                                   dtype=torch.float64, device=device)
        weight = linear.weight.detach()
        weight_grad = linear.weight.grad
        if weight_grad is None:
            weight_grad = torch.zeros_like(weight)
        if not grouped:
            weight, weight_grad = weight.unsqueeze(0), weight_grad.unsqueeze(0)
        _, g_std, g_min, g_max, _ = group_moments(weight_grad, 0.0, reducer.scratch(weight))
        w_std = group_moments(weight, 0.0, reducer.scratch(weight))[1]
        parts += [pre_grad, torch.stack([g_std, g_min, g_max, w_std], dim=1).to(torch.float64)]
    return torch.cat(parts, dim=1)
