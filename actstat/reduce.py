"""Reductions: the device-side arithmetic of every statistic (definitions: actstat/analysis.py).

The measurement engine (actstat/capture.py) reduces each tensor inside its hook with these, or with
actstat/fused.py's C kernel where it takes the tensor; both give the same numbers to float
rounding. Every reduction is a sum, a min or a max along one dimension, on the device, into small
tensors: nothing here copies to the host.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

HIST_BINS = 40  # cells per layer in --hist and in the figures' heat maps


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
    """The loss of every backward pass: cross-entropy (mean over the batch unless `reduction`
    says otherwise), computed in at least float32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels, reduction=reduction)


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


def group_histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    bins: int) -> torch.Tensor:
    """(K, bins) float64 counts: each group x[k] binned in `bins` equal bins over its own
    [lo[k], hi[k]] (the last bin closed, as np.histogram; values outside go to the end bins, NaN
    to the first; a constant group all in the first bin). On the CPU, torch.bincount of the bin
    indices, several times faster than scatter_add or histc's loop; on a GPU scatter_add, as
    bincount reads its input's max there: a host sync per layer."""
    flat = exact(x).reshape(x.shape[0], -1)
    lo, hi = lo.to(flat.dtype)[:, None], hi.to(flat.dtype)[:, None]
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    index = (flat - lo).mul_(bins / width).floor_().clamp_(0, bins - 1)
    index = torch.nan_to_num_(index, nan=0.0).long()
    if flat.shape[0] > 1:
        index += torch.arange(flat.shape[0], device=x.device)[:, None] * bins
    size = flat.shape[0] * bins
    if x.device.type == "cpu":
        counts = torch.bincount(index.reshape(-1), minlength=size).to(torch.float64)
    else:
        counts = torch.zeros(size, dtype=torch.float64, device=x.device)
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
