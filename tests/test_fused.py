"""actstat/fused.py's C kernel on its own, against NumPy: both layouts, tensors large enough to
be shared among threads (the kernel's own pool), and the argument checks. Every capture test of
tests/test_capture.py runs through it too (its `fused` parameter); tests/test_threads.py calls it
from several threads at once. `fused.path` is tested with and without the kernel."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from actstat import fused

needs_kernel = pytest.mark.skipif(not fused.AVAILABLE,
                                  reason="actstat._kernels was not built (no C compiler)")

NEAR = 0.01


@pytest.fixture
def threads():
    """torch's thread count, restored after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def reference(a: np.ndarray, unit_axis: int, spread_axis: int) -> dict[str, float]:
    """The kernel's numbers from float64 NumPy: population std; near-zero as float32 compares;
    dead = units 0 everywhere; gap = the largest range across units at one sample (and
    position)."""
    units = np.moveaxis(a, unit_axis, 0).reshape(a.shape[unit_axis], -1)
    return {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(),
            "abs_mean": np.abs(a).mean(),
            "near": float((np.abs(a.astype(np.float32)) < np.float32(NEAR)).sum()),
            "gap": float((a.max(axis=spread_axis) - a.min(axis=spread_axis)).max()),
            "dead": float((units == 0).all(axis=1).mean())}


def numbers(view: torch.Tensor, channels: bool) -> dict[str, float]:
    got = fused.reduce(view, channels=channels, near_zero=NEAR, edges=None, spread=True)
    assert got is not None
    mean, std, lo, hi, small, _, gap, dead, abs_mean = got
    return {"mean": mean, "std": std, "min": lo, "max": hi, "abs_mean": abs_mean, "near": small,
            "gap": gap, "dead": dead}


def data(shape: tuple[int, ...], unit_axis: int) -> torch.Tensor:
    """ReLU'd Gaussians plus an offset, a unit dead throughout, a unit dead in the first half of
    the samples only (alive in another thread's part), and exact zeros and -0.0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).relu_() + 0.5
    index = [slice(None)] * len(shape)
    index[unit_axis] = 0
    x[tuple(index)] = 0.0
    index[unit_axis] = 1
    x[tuple(index)] = 0.0
    index[0] = slice(shape[0] - 1, None)  # alive in the last sample only
    x[tuple(index)] = 3.0
    x.reshape(-1)[5::97] = -0.0
    return x.contiguous()


@needs_kernel
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("layout", ["rows", "channels"])
def test_the_numbers_are_numpys_on_any_number_of_threads(threads, count, layout):
    """A tensor of half a million values is shared among up to `count` threads (parts of
    samples, merged by Chan's update): every number is NumPy's, the same on 1, 2 or 3."""
    threads(count)
    if layout == "rows":
        x, channels, unit_axis, spread_axis = data((1000, 500), 1), False, 1, 1
    else:
        x, channels, unit_axis, spread_axis = data((50, 10, 1000), 1), True, 1, 1
    got = numbers(x, channels)
    want = reference(x.double().numpy(), unit_axis, spread_axis)
    for key in ("min", "max", "near", "gap", "dead"):
        assert got[key] == pytest.approx(want[key], rel=1e-7), key
    assert got["abs_mean"] == pytest.approx(want["abs_mean"], rel=1e-7)  # float32 blocks
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-9)
    assert got["std"] == pytest.approx(want["std"], rel=1e-7)  # float32 block sums of squares
    assert want["dead"] == pytest.approx(1 / x.shape[unit_axis])  # one dead, one alive late


@needs_kernel
def test_parts_of_a_thread_team_agree_with_one_thread(threads):
    """The same tensor on one thread and on two gives the same numbers to float64 rounding of
    the merge (the parts differ only in where Chan's update joins them)."""
    x = data((2048, 256), 1)
    threads(1)
    one = numbers(x, False)
    threads(2)
    two = numbers(x, False)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@needs_kernel
def test_saturation_counts_both_rules():
    """Two edges count |x - mid| >= half-width; one edge x <= lo (or x >= hi)."""
    x = torch.linspace(-3, 3, 6001)[:6000].reshape(3, -1).contiguous()
    a = x.numpy()
    both = fused.reduce(x, channels=False, near_zero=NEAR, edges=(-1.0, 1.0), spread=False)
    low = fused.reduce(x, channels=False, near_zero=NEAR, edges=(-1.0, None), spread=False)
    high = fused.reduce(x, channels=False, near_zero=NEAR, edges=(None, 2.0), spread=False)
    assert both[5] == (np.abs(a) >= np.float32(1)).sum()
    assert low[5] == (a <= np.float32(-1)).sum()
    assert high[5] == (a >= np.float32(2)).sum()


@needs_kernel
def test_without_units_the_dead_fraction_is_nan_and_a_poisoned_tensor_is_refused():
    x = torch.randn(40, 30)
    got = fused.reduce(x, channels=False, near_zero=NEAR, edges=None, spread=False, units=False)
    assert math.isnan(got[7])
    for poison in (float("nan"), float("inf")):
        y = x.clone()
        y[3, 4] = poison
        assert fused.reduce(y, channels=False, near_zero=NEAR, edges=None, spread=False) is None


@needs_kernel
def test_the_extension_checks_its_arguments():
    """Called wrongly (it is internal: fused.reduce builds its arguments), it raises rather
    than reading out of bounds."""
    from actstat import _kernels

    x = torch.ones(4, 4)
    args = [x.data_ptr(), 4, 4, 1, False, NEAR, 0.0, math.inf, -math.inf, math.inf, 0, False,
            1, 0.0, fused.SEGMENT, 1]
    assert _kernels.reduce(*args)[0] == 16
    with pytest.raises(TypeError, match="16 arguments"):
        _kernels.reduce(*args[:-1])
    for position, bad in [(1, 0), (2, 0), (14, 0), (0, 0)]:
        wrong = list(args)
        wrong[position] = bad
        with pytest.raises(ValueError, match="empty tensor"):
            _kernels.reduce(*wrong)


@needs_kernel
@pytest.mark.parametrize("channels", [False, True])
def test_dead_below_counts_units_never_above_the_threshold(channels):
    """An activation's floor (`dead_below`): a unit is dead when its largest value is at or below
    `dead_below` (ReLU's 0: never positive), compared in float32."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, 9, generator=g) if channels else torch.randn(64, 12, generator=g)
    x[:, 3] = -x[:, 3].abs()  # never positive
    x[:, 5] = -x[:, 5].abs()
    x[7, 5] = 0.0  # at the threshold: still dead
    x[:, 8] = -x[:, 8].abs()
    x[9, 8] = 1e-30  # above it once: alive
    view = x.reshape(64, 12, -1) if channels else x
    got = fused.reduce(view.contiguous(), channels=channels, near_zero=NEAR, edges=None,
                       spread=False, dead_below=0.0)
    per_unit = x.transpose(0, 1).reshape(12, -1)
    assert got[7] == pytest.approx(float((per_unit.amax(dim=1) <= 0).double().mean()))
    assert got[7] == pytest.approx(2 / 12)


@needs_kernel
@pytest.mark.parametrize("threshold", [None, -0.5])
@pytest.mark.parametrize("count", [1, 2])
def test_a_few_dead_units_are_followed_one_by_one_to_the_last_row(threads, count, threshold):
    """Once at most one unit in eight is not known alive, the kernel follows those units alone
    (their indices) rather than every unit's flag: units that come alive in the last rows it
    reads (the first samples: it reads backwards), in the middle, or never, are counted as
    NumPy counts them, by either rule, on one thread or two."""
    threads(count)
    floor = 0.0 if threshold is None else threshold
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 96, generator=g).abs() + floor + 0.1
    for unit in (3, 40, 41, 77, 95):
        x[:, unit] = floor
    x[0, 3] = floor + 1.0  # alive in the first sample only: the last row read
    x[200, 40] = floor + 2.0  # alive in the middle
    x[399, 95] = floor + 1.0  # alive in the last sample: the first row read
    got = fused.reduce(x, channels=False, near_zero=NEAR, edges=None, spread=False,
                       dead_below=threshold)
    assert got[7] == pytest.approx(float((x == floor).all(dim=0).double().mean()))
    assert got[7] == pytest.approx(2 / 96)


@pytest.mark.parametrize(("built", "enabled", "want"), [
    (True, True, "kernel"), (True, False, "torch (ACTSTAT_KERNELS=0)"),
    (False, False, "torch (actstat._kernels not built)")])
def test_path_names_the_reduction_and_why(monkeypatch, built, enabled, want):
    monkeypatch.setattr(fused, "AVAILABLE", built)
    monkeypatch.setattr(fused, "ENABLED", enabled)
    assert fused.path() == want


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["0", "1", None])
def test_path_follows_the_environment_of_the_process(setting):
    """ACTSTAT_KERNELS=0 turns the kernel off for the process; anything else leaves it on where
    it was built."""
    env = {key: value for key, value in os.environ.items() if key != "ACTSTAT_KERNELS"}
    if setting is not None:
        env["ACTSTAT_KERNELS"] = setting
    got = subprocess.run([sys.executable, "-c", "from actstat import fused; print(fused.path())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    if setting == "0":
        assert got == "torch (ACTSTAT_KERNELS=0)"
    else:
        assert got == ("kernel" if fused.AVAILABLE else "torch (actstat._kernels not built)")


# -- attention rows (stream.attention_numbers' kernel) -------------------------------------------

def attention_reference(logits: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per head, the sum of the queries' entropies over ln of their allowed keys (those above
    `floor`) and the count of queries with two or more, in float64 NumPy: logits (batch, heads,
    queries, keys)."""
    allowed = logits > floor
    top = np.where(allowed, logits, -np.inf).max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # (a query with no key allowed)
    e = np.where(allowed, np.exp(np.where(allowed, logits - top, 0.0)), 0.0)
    p = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
    keys = allowed.sum(-1)
    counted = keys >= 2
    normalised = np.where(counted, entropy / np.log(np.maximum(keys, 2)), 0.0)
    return normalised.sum(axis=(0, 2)), counted.sum(axis=(0, 2)).astype(float)


@needs_kernel
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("keys", [1, 7, 256, 700])
def test_attention_rows_are_numpys_on_any_number_of_threads(threads, count, keys):
    """Each head's summed normalised entropy and counted queries, as NumPy takes them, on rows
    shorter and longer than the kernel's blocks, with keys masked by -inf and by float32's
    lowest value (a whole query of them: not counted), logits from near-uniform to one-hot
    (scale 40: exp of most keys far below float32's smallest), on a strided view (a piece of
    queries), and on 1 to 3 threads (a tensor large enough to be shared)."""
    threads(count)
    g = torch.Generator().manual_seed(keys)
    scale = torch.tensor([0.01, 1.0, 5.0, 40.0]).reshape(1, 4, 1, 1)
    whole = torch.randn(6, 4, 90, keys, generator=g) * scale
    whole[0, :, 3, keys // 2:] = -math.inf
    whole[1, 2, 5, :] = torch.finfo(torch.float32).min
    whole[2, :, :, -1] = torch.finfo(torch.float32).min
    floor = torch.finfo(torch.float32).min / 10
    for logits in (whole, whole[:, :, 10:50]):
        sums = torch.zeros(8, dtype=torch.float64)
        fused.attention(logits, floor, sums)
        entropy, counted = attention_reference(logits.double().numpy(), floor)
        assert np.allclose(sums[:4].numpy(), entropy, rtol=2e-6, atol=1e-9)
        assert np.array_equal(sums[4:].numpy(), counted)
    assert fused.takes_logits(whole[:, :, 10:50]) and not fused.takes_logits(whole[..., ::2])


@needs_kernel
def test_attention_rows_add_to_what_the_sums_held():
    """A second call adds its numbers to the first's (the pieces of one attention)."""
    logits = torch.randn(2, 3, 5, 9, generator=torch.Generator().manual_seed(3))
    once, twice = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    fused.attention(logits, -1e37, once)
    fused.attention(logits[:1], -1e37, twice)
    fused.attention(logits[1:], -1e37, twice)
    assert torch.allclose(once, twice, rtol=1e-12)
    assert once[3:].tolist() == [10.0, 10.0, 10.0]


@needs_kernel
def test_the_attention_entry_checks_its_arguments():
    from actstat import _kernels

    logits, sums = torch.zeros(1, 1, 2, 2), torch.zeros(2, dtype=torch.float64)
    args = [logits.data_ptr(), 1, 1, 2, 2, 4, 4, 2, -1e37, sums.data_ptr(), 1]
    _kernels.attention(*args)
    assert sums.tolist() == [2.0, 2.0]  # two queries of two equal logits: 1 each
    with pytest.raises(TypeError, match="11 arguments"):
        _kernels.attention(*args[:-1])
    for position in (0, 1, 2, 3, 4, 9):
        wrong = list(args)
        wrong[position] = 0
        with pytest.raises(ValueError, match="empty logits"):
            _kernels.attention(*wrong)
