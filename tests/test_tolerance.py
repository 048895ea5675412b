"""`check`'s tolerances on values far from 1: a std metric is held to a ratio (|ln(b / a)| <=
ln(1 + rtol)), a mean to atol × the expected std of its tensor, so an exploding layer's 1e16 and a
vanishing layer's 1e-9 are held to the same relative standard as a 0.8. A plain difference, or
a mean held to atol alone, fails these."""

from __future__ import annotations

import pytest

from actstat.check import compare
from actstat.records import SCHEMA_VERSION, InputStats, LayerStats, PostStats, Report, Run, TensorStats

RTOL, ATOL = 0.05, 0.05


def report(post_std: float, post_mean: float = 0.0) -> Report:
    pre = TensorStats(mean=0.0, std=1.0, min=-1.0, max=1.0, near_zero=0.0)
    post = PostStats(mean=post_mean, std=post_std, min=-1.0, max=1.0, near_zero=0.0, dead=None,
                     saturated=None)
    row = LayerStats(1, 4, 4, pre, post, None, ())
    run = Run("kaiming + relu", "kaiming", {}, "relu", {}, "healthy", None, (row,))
    given = InputStats("gaussian", 8, 4, False, 0.0, 1.0)
    return Report(SCHEMA_VERSION, "0", "0", "cpu", {}, given, (run,))


def drifted(expected: Report, obtained: Report, metric: str) -> bool:
    _, drifts, _ = compare(expected, obtained, metrics=(metric,), rtol=RTOL, atol=ATOL,
                           tolerances={})
    return bool(drifts)


@pytest.mark.parametrize("scale", [1e-9, 1e-3, 0.8, 1e3, 1e16])
def test_a_std_is_held_to_a_ratio_at_any_scale(scale):
    base = report(scale)
    assert not drifted(base, report(scale * 1.04), "post_std")
    assert not drifted(base, report(scale / 1.04), "post_std")  # symmetric in log space
    assert drifted(base, report(scale * 1.06), "post_std")
    assert drifted(base, report(scale / 1.06), "post_std")


@pytest.mark.parametrize("scale", [1e-9, 0.8, 1e16])
def test_a_mean_is_held_to_atol_times_its_own_std(scale):
    base = report(scale, post_mean=2 * scale)
    assert not drifted(base, report(scale, post_mean=2.04 * scale), "post_mean")
    assert drifted(base, report(scale, post_mean=2.06 * scale), "post_mean")


def test_one_zero_std_fails_and_two_pass():
    assert not drifted(report(0.0), report(0.0), "post_std")
    assert drifted(report(0.0), report(1e-12), "post_std")
    assert drifted(report(1e-12), report(0.0), "post_std")
