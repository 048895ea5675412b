"""Fused CPU reductions for capture.py: every statistic of a float32 tensor in one read of it;
and for stream.py, the attention numbers of a piece of logits in one read of each query's row.

The work is done by the C extension actstat._kernels (actstat/_kernels.c, built by setup.py at
install time, optional: without a C compiler the install goes on without it). `AVAILABLE` says
whether it was built; capture.py keeps its torch reductions for everything the kernel does not
take (CUDA, half precision, float64, a strided view, a tensor holding NaN or ±inf) and for an
install without it. Definitions of the statistics: capture.py's module docstring; how the
kernel computes them: _kernels.c's header.

The ten or so torch passes of a value (extremes, sum, centred squares, |x|, masks and their
counts, each unit's max|x|) cost ~0.7 ms per 256K values on the 2-core benchmark machine with
their dispatch; the kernel takes ~0.09 ms on one thread (docs/performance.md).
"""

from __future__ import annotations

import math
import os

import torch

try:
    from actstat import _kernels
except ImportError:  # built without a C compiler: the torch reductions serve
    _kernels = None

AVAILABLE = _kernels is not None
# ACTSTAT_KERNELS=0 in the environment turns the kernel off (the torch reductions then serve)
ENABLED = AVAILABLE and os.environ.get("ACTSTAT_KERNELS", "") != "0"
# values per segment: 16 KiB of float32, in L1 on any CPU, so a segment's later passes hit it
SEGMENT = 4096
_INF = math.inf


def path() -> str:
    """Which reduction serves this process's float32 CPU tensors, for a report to record: "kernel"
    (the C kernel), or "torch" with the reason in parentheses: "torch (ACTSTAT_KERNELS=0)", or
    "torch (actstat._kernels not built)" where the install found no C compiler. The two agree
    to float rounding, so two machines' numbers compare exactly only on the same path; CUDA,
    half precision, float64 and strided tensors take the torch reductions on every path
    (`takes`)."""
    if not AVAILABLE:
        return "torch (actstat._kernels not built)"
    if not ENABLED:
        return "torch (ACTSTAT_KERNELS=0)"
    return "kernel"


def path_for(device: torch.device, dtype: str) -> str:
    """What reduced a run's statistics, for its report: `path()` for float32 on the CPU; else
    "torch" with why (the kernel takes float32 CPU tensors alone)."""
    if device.type != "cpu":
        return f"torch ({device.type})"
    if dtype != "float32":
        return f"torch ({dtype})"
    return path()


def takes(view: torch.Tensor) -> bool:
    """Whether the kernel reduces `view`: built and ENABLED, a non-empty C-contiguous float32
    CPU tensor. Everything else (CUDA, half precision, float64, a strided view) keeps the
    torch reductions."""
    return (ENABLED and view.is_cpu and view.dtype == torch.float32 and view.numel() > 0
            and view.is_contiguous())


def reduce(view: torch.Tensor, *, channels: bool, near_zero: float,
           edges: tuple[float | None, float | None] | None, spread: bool,
           units: bool = True, dead_below: float | None = None) -> tuple[float, ...] | None:
    """(mean, std, min, max, near-zero count, saturated count, gap, dead fraction, mean |x|) of
    `view`, a non-empty C-contiguous float32 CPU tensor: (samples, units), or (batch, channels,
    positions) with `channels`; None when it holds NaN or ±inf (reduce it with torch).

    `edges`: the saturation edges (lo, hi) of Activation.saturation_edges, None without a
    saturation rule (reduce.saturated_fraction's tests: |x - mid| >= half-width when both
    exist). `spread`: the gap, the largest range across units at one sample (and position);
    else 0. `units`: count dead units (else the dead fraction is NaN): a unit is dead when all
    its values are 0, or with `dead_below`, when none is above it (an activation's floor,
    compared in float32). A large tensor is cut into as many parts as torch uses threads
    (torch.get_num_threads()), shared among threads of torch's OpenMP pool where one is loaded
    (_kernels.c says how); its numbers depend on that count only. Several Python threads may
    call this at once."""
    kind, mid, half, lo_edge, hi_edge = 0, 0.0, _INF, -_INF, _INF
    if edges is not None:
        lo, hi = edges
        if lo is not None and hi is not None:
            kind, mid, half = 1, (lo + hi) / 2, (hi - lo) / 2
        elif lo is not None or hi is not None:
            kind = 2
            lo_edge = lo if lo is not None else -_INF
            hi_edge = hi if hi is not None else _INF
    if channels:
        batch, width, positions = view.shape
    else:
        (batch, width), positions = view.shape, 1
    count, mean, m2, lo, hi, small, saturated, gap, dead, magnitude = _kernels.reduce(
        view.data_ptr(), batch, width, positions, channels, near_zero, mid, half, lo_edge,
        hi_edge, kind, spread, (1 if dead_below is None else 2) if units else 0,
        0.0 if dead_below is None else dead_below, SEGMENT, torch.get_num_threads())
    if not (math.isfinite(mean) and math.isfinite(m2)):
        return None
    return (mean, math.sqrt(m2 / count), lo, hi, small, saturated, gap,
            dead / width if units else math.nan, magnitude / count)


def takes_logits(logits: torch.Tensor) -> bool:
    """Whether `attention` takes `logits`: built and ENABLED, a non-empty 4-D float32 CPU tensor
    whose last dimension (the keys) is contiguous."""
    return (ENABLED and logits.is_cpu and logits.dtype == torch.float32 and logits.dim() == 4
            and logits.numel() > 0 and logits.stride(-1) == 1)


def attention(logits: torch.Tensor, floor: float, sums: torch.Tensor) -> None:
    """Adds the attention numbers of `logits` (batch, heads, queries, keys; `takes_logits`, and
    holding no NaN or +inf) to `sums`, a contiguous float64 CPU tensor of 2 heads: per head the
    sum of the queries' normalised entropies, then per head the count of queries with at least
    two allowed keys (logits above `floor`). stream.py's
    `attention_numbers` states the definitions; _kernels.c how the kernel computes them. Parts
    of rows are shared among threads as `reduce`'s are; the sums depend on their count only."""
    batch, heads, queries, keys = logits.shape
    stride_b, stride_h, stride_q, _ = logits.stride()
    _kernels.attention(logits.data_ptr(), batch, heads, queries, keys, stride_b, stride_h,
                       stride_q, floor, sums.data_ptr(), torch.get_num_threads())


def relative_gap(lo: float, hi: float, gap: float) -> float:
    """probe.unit_spread of the kernel's numbers: the gap relative to max|x|, 0 for an all-zero
    tensor."""
    scale = max(abs(lo), abs(hi))
    return gap / scale if scale > 0 else 0.0
