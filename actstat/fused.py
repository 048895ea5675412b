"""Fused CPU reductions for capture.py: every statistic of a float32 tensor in one read of it.

Compiled by numba (the `fast` extra), on first use, into numba's cache (next to this file, or
in the user's cache directory where that is read-only). capture.py imports this module only
when numba is installed, and only when it reduces a contiguous float32 CPU tensor; it keeps
its torch reductions for everything else (CUDA, half precision, float64, a strided view).
Definitions of the statistics: capture.py's module docstring; here only how they are computed.

The ten or so torch passes of a value (extremes, sum, centred squares, |x|, masks and their
counts, each unit's max|x|) cost ~1.1 ms per million values on the 2-core benchmark machine,
where one read of them costs ~0.1 ms: here each value is loaded once from memory, into
registers and L1, and every statistic is taken from there.

- Mean and std: two passes over a segment of at most SEGMENT values (a few KiB, in L1 after
  the first), the sum and then the squares about the segment's own mean, both in float64 (a
  float32 value's square cannot overflow or underflow there), combined across segments and
  threads by Chan, Golub and LeVeque's pairwise update.
- Thresholds are compared in float32 as torch compares a float32 tensor with a Python float:
  |x| < float32(near_zero); saturation as probe.saturated_fraction computes it.
- A tensor holding NaN or ±inf is not reduced here (`reduce` returns None): capture.py reduces
  it with torch, whose propagation rules the reports document. Checking the mean and std is
  enough: the float64 sum of such a tensor is never finite.
"""

from __future__ import annotations

import os

import numba
import numpy as np

# numba's OpenMP layer runs a second OpenMP runtime beside torch's, and the two pools spin
# against each other for the cores: on the 2-core machine under load a captured forward cost
# 3.6 times a bare one with it, 1.1 times with numba's own workqueue (CPU seconds, depth 8,
# width 1024). A user's NUMBA_THREADING_LAYER still wins
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# in L1 on any CPU (16 KiB of float32), so the second pass of a segment is a cache hit
SEGMENT = 4096

# reassoc lets the sums vectorise; nothing else (no-NaN/no-inf flags would make the inf
# sentinels and the edge tests undefined, `contract` would fuse d * d + s)
_FAST = {"reassoc"}
_TOP = np.int32(0x7FFFFFFF)

# Each statistic is its own loop over a segment (a slice: numba then knows its indices are
# in range, and LLVM vectorises each loop; one loop computing them all did not vectorise
# and ran 20x slower). Extremes are taken of int32 keys, which order as the float32 values
# do (a float min/max reduction does not vectorise): key = bits ^ ((bits >> 31) & 0x7fffffff)


@numba.njit(inline="always", fastmath=_FAST)
def _segment(values, bits, near_below, near, mid, half, lo_edge, hi_edge):
    """Sum, sum of squares about its mean, extreme keys, near-zero and saturated counts,
    and whether any value is nonzero, of one segment."""
    total = 0.0
    for i in range(values.size):
        total += np.float64(values[i])
    mean = total / values.size
    squares = 0.0
    for i in range(values.size):
        d = np.float64(values[i]) - mean
        squares += d * d
    # near zero: -near < x < near, i.e. between the keys of -near and near (exclusive)
    lo = _TOP
    hi = -_TOP - np.int32(1)
    small = np.int32(0)
    for i in range(bits.size):
        b = bits[i]
        key = b ^ ((b >> 31) & _TOP)
        lo = min(lo, key)
        hi = max(hi, key)
        small += (key > near_below) & (key < near)
    saturated = np.float32(0.0)
    if half < np.inf:  # two edges: |x - mid| >= half-width, in float32 as torch
        for i in range(values.size):
            saturated += (np.float32(1.0) if abs(values[i] - mid) >= half
                          else np.float32(0.0))
    elif lo_edge > -np.inf or hi_edge < np.inf:
        for i in range(values.size):
            v = values[i]
            saturated += (np.float32(1.0) if (v <= lo_edge) | (v >= hi_edge)
                          else np.float32(0.0))
    # all zero: every key is that of +0 (0) or -0 (-1)
    nonzero = lo < -1 or hi > 0
    return total, squares, lo, hi, small, saturated, nonzero

@numba.njit(inline="always")
def _merge(count, mean, m2, n, total, squares):
    """Chan's update: (count, mean, m2) of the values so far and a segment of n values with
    its sum and its squares about its own mean."""
    both = count + n
    delta = total / n - mean
    mean += delta * n / both
    m2 += squares + delta * delta * (count * n / both)
    return both, mean, m2

@numba.njit(inline="always")
def _value(key, scratch):
    """The float32 value of an extreme key (scratch: an int32 array of 1 viewed as float32
    by `scratch.view`)."""
    scratch[0] = key ^ ((key >> 31) & _TOP)
    return scratch.view(np.float32)[0]

@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def reduce_rows(x, bits, near_below, near, mid, half, lo_edge, hi_edge, spread, segment,
                 blocks):
    """x: (samples, units), C-contiguous float32, `bits` the same memory as int32; the unit
    is the column. Per-block partials for `combine`: counts, means, m2s, low and high keys,
    small and saturated counts, gaps (largest range across units on one sample), and
    `alive` (blocks, units): a unit that is nonzero somewhere."""
    rows, units = x.shape
    counts = np.zeros(blocks)
    means = np.zeros(blocks)
    m2s = np.zeros(blocks)
    los = np.full(blocks, _TOP, dtype=np.int32)
    his = np.full(blocks, -_TOP - np.int32(1), dtype=np.int32)
    smalls = np.zeros(blocks)
    saturateds = np.zeros(blocks)
    gaps = np.zeros(blocks, dtype=np.float32)
    alive = np.zeros((blocks, units), dtype=np.uint8)
    for b in numba.prange(blocks):
        first = b * rows // blocks
        last = (b + 1) * rows // blocks
        count = 0.0
        mean = 0.0
        m2 = 0.0
        small = 0.0
        saturated = 0.0
        lo = _TOP
        hi = -_TOP - np.int32(1)
        gap = np.float32(0.0)
        scratch = np.zeros(1, dtype=np.int32)
        mask = alive[b]
        # last row first: a module leaves the end of its output in the caches
        for r in range(last - 1, first - 1, -1):
            row = x[r]
            row_bits = bits[r]
            row_lo = _TOP
            row_hi = -_TOP - np.int32(1)
            for start in range(0, units, segment):
                stop = min(start + segment, units)
                total, squares, s_lo, s_hi, s_small, s_sat, _ = _segment(
                    row[start:stop], row_bits[start:stop], near_below, near, mid, half, lo_edge, hi_edge)
                count, mean, m2 = _merge(count, mean, m2, stop - start, total, squares)
                row_lo = min(row_lo, s_lo)
                row_hi = max(row_hi, s_hi)
                small += s_small
                saturated += s_sat
            for i in range(units):
                mask[i] |= row[i] != 0
            if spread:
                gap = max(gap, _value(row_hi, scratch) - _value(row_lo, scratch))
            lo = min(lo, row_lo)
            hi = max(hi, row_hi)
        counts[b] = count
        means[b] = mean
        m2s[b] = m2
        los[b] = lo
        his[b] = hi
        smalls[b] = small
        saturateds[b] = saturated
        gaps[b] = gap
    return counts, means, m2s, los, his, smalls, saturateds, gaps, alive

@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def reduce_channels(x, bits, near_below, near, mid, half, lo_edge, hi_edge, spread, segment,
                 blocks):
    """x: (batch, channels, positions), C-contiguous float32, `bits` the same memory as
    int32; the unit is the channel, and the spread is taken across channels at each sample
    and position. Returns what `reduce_rows` returns, `alive` being (blocks, channels)."""
    batch, channels, positions = x.shape
    counts = np.zeros(blocks)
    means = np.zeros(blocks)
    m2s = np.zeros(blocks)
    los = np.full(blocks, _TOP, dtype=np.int32)
    his = np.full(blocks, -_TOP - np.int32(1), dtype=np.int32)
    smalls = np.zeros(blocks)
    saturateds = np.zeros(blocks)
    gaps = np.zeros(blocks, dtype=np.float32)
    alive = np.zeros((blocks, channels), dtype=np.uint8)
    for b in numba.prange(blocks):
        first = b * batch // blocks
        last = (b + 1) * batch // blocks
        count = 0.0
        mean = 0.0
        m2 = 0.0
        small = 0.0
        saturated = 0.0
        lo = _TOP
        hi = -_TOP - np.int32(1)
        gap = np.float32(0.0)
        # each position's extreme keys across channels (integer loops vectorise; float ones
        # did not, and cost more than every other statistic together)
        position_lo = np.empty(positions if spread else 0, dtype=np.int32)
        position_hi = np.empty(positions if spread else 0, dtype=np.int32)
        for s in range(last - 1, first - 1, -1):
            if spread:
                position_lo[:] = _TOP
                position_hi[:] = -_TOP - np.int32(1)
            for c in range(channels - 1, -1, -1):
                row = x[s, c]
                row_bits = bits[s, c]
                for start in range(0, positions, segment):
                    stop = min(start + segment, positions)
                    total, squares, s_lo, s_hi, s_small, s_sat, nonzero = _segment(
                        row[start:stop], row_bits[start:stop], near_below, near, mid, half, lo_edge,
                        hi_edge)
                    count, mean, m2 = _merge(count, mean, m2, stop - start, total, squares)
                    lo = min(lo, s_lo)
                    hi = max(hi, s_hi)
                    small += s_small
                    saturated += s_sat
                    if nonzero:
                        alive[b, c] = 1
                if spread:
                    for i in range(positions):
                        k = row_bits[i] ^ ((row_bits[i] >> 31) & _TOP)
                        position_lo[i] = min(position_lo[i], k)
                        position_hi[i] = max(position_hi[i], k)
            if spread:  # keys back to float32 bits (the map is its own inverse)
                for i in range(positions):
                    position_lo[i] ^= (position_lo[i] >> 31) & _TOP
                    position_hi[i] ^= (position_hi[i] >> 31) & _TOP
                lows = position_lo.view(np.float32)
                highs = position_hi.view(np.float32)
                for i in range(positions):
                    gap = max(gap, highs[i] - lows[i])
        counts[b] = count
        means[b] = mean
        m2s[b] = m2
        los[b] = lo
        his[b] = hi
        smalls[b] = small
        saturateds[b] = saturated
        gaps[b] = gap
    return counts, means, m2s, los, his, smalls, saturateds, gaps, alive


def combine(partials) -> tuple[float, ...] | None:
    """(mean, std, min, max, small count, saturated count, gap, dead fraction) from a kernel's
    per-block partials, in float64; None when the tensor holds NaN or ±inf (reduce it with
    torch)."""
    counts, means, m2s, los, his, smalls, saturateds, gaps, alive = partials
    count = mean = m2 = 0.0
    for n, block_mean, block_m2 in zip(counts.tolist(), means.tolist(), m2s.tolist()):
        if n == 0:
            continue
        both = count + n
        delta = block_mean - mean
        mean += delta * n / both
        m2 += block_m2 + delta * delta * (count * n / both)
        count = both
    if not (np.isfinite(mean) and np.isfinite(m2)):
        return None
    dead = float((alive.max(axis=0) == 0).mean()) if alive.shape[1] else 0.0
    keys = np.array([los.min(), his.max()], dtype=np.int32)
    lo, hi = (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(np.float32).tolist()
    return (mean, float(np.sqrt(m2 / count)), lo, hi,
            float(smalls.sum()), float(saturateds.sum()), float(gaps.max()), dead)


def key(value: float) -> int:
    """The int32 key of float32(value), ordered as the float32 values are (see _segment)."""
    bits = int(np.array([value], dtype=np.float32).view(np.int32)[0])
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def reduce(values, *, channels: bool, near_zero: float,
           edges: tuple[float | None, float | None] | None, spread: bool,
           segment: int | None = None) -> tuple[float, ...] | None:
    """`combine`'s numbers for `values`, a C-contiguous float32 NumPy array: (samples, units),
    or (batch, channels, positions) with `channels`. `edges`: the saturation edges (lo, hi),
    None without a saturation rule; probe.saturated_fraction's one-pass test when both exist."""
    inf = np.float32(np.inf)
    mid, half, lo_edge, hi_edge = np.float32(0), inf, -inf, inf
    if edges is not None:
        lo, hi = edges
        if lo is not None and hi is not None:
            mid, half = np.float32((lo + hi) / 2), np.float32((hi - lo) / 2)
        else:
            lo_edge = np.float32(lo) if lo is not None else -inf
            hi_edge = np.float32(hi) if hi is not None else inf
    # at least one block per thread; a few more, so that a thread that loses its core to
    # another process does not hold the pass back by a whole half
    samples = values.shape[0]
    blocks = max(1, min(samples, 4 * numba.get_num_threads()))
    kernel = reduce_channels if channels else reduce_rows
    near = abs(float(np.float32(near_zero)))
    return combine(kernel(values, values.view(np.int32), np.int32(key(-near)),
                          np.int32(key(near)), mid, half, lo_edge, hi_edge, spread,
                          segment or SEGMENT, blocks))
