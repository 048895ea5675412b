"""Analysis: a probe's measurements -> LayerStats records with flags, and one verdict per scheme.

Definitions (each statistic is taken over all batch × units values of the tensor):

- `mean`, `std`: population mean and standard deviation (correction=0, as NumPy's `np.std`).
- `min`, `max`: the extreme values.
- `near_zero`: the fraction of values with |x| < thresholds.near_zero (absolute, both signs).
- `dead` (post only): the fraction of units whose pre-activation is <= the activation's flat-region
  edge for every sample of the batch, so that the unit's output is constant (0 for relu) and its
  gradient exactly zero for the whole batch. For relu this is exactly "post is 0 for every
  sample". None for activations with no flat region (leaky_relu, tanh, gelu, ...).
- `saturated` (post only): the fraction of values within (1 - thresholds.saturation_cut) of the
  ends of a bounded activation's range, in units of its half-range: |t| >= 0.97 for tanh by
  default; for general_relu with clamp_max, values at the clamp. None for unbounded activations.

Flags (thresholds are config keys; see actstat/config.py for their defaults and sources):

- `nonfinite`: NaN or Inf among the layer's pre- or post-activations. The run still completes.
- `symmetric`: every unit of the layer computes the same pre-activation for each sample, to within
  thresholds.symmetric of the layer's largest |value| (all-zero layers included); needs 2+ units.
  Constant inits do this; such units get identical gradients and never differentiate.
- `vanishing`: post std < thresholds.vanishing × the input's std.
- `exploding`: post std > thresholds.exploding × the input's std.
- `dead`: dead fraction > thresholds.dead.
- `saturated`: saturated fraction > thresholds.saturated.

The verdict of a scheme is the first of `FLAGS` (actstat/report.py) that any of its layers carries (the most
fundamental cause first: symmetric weights explain vanishing, not the other way round), else
`healthy`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from actstat.config import Thresholds
from actstat.report import FLAGS, HEALTHY, LayerStats, PostStats, TensorStats, finite_or_none

if TYPE_CHECKING:
    from actstat.probe import RawLayer



def analyse(layers: list[RawLayer], *, input_std: float, thresholds: Thresholds, can_die: bool,
            bounded: bool) -> tuple[LayerStats, ...]:
    """One LayerStats per hidden layer, in order, with its flags."""
    return tuple(
        _layer(i, raw, input_std, thresholds, can_die, bounded)
        for i, raw in enumerate(layers, start=1)
    )


def verdict(layers: tuple[LayerStats, ...]) -> str:
    present = {flag for layer in layers for flag in layer.flags}
    return next((flag for flag in FLAGS if flag in present), HEALTHY)


def first_flagged(layers: tuple[LayerStats, ...], flag: str) -> LayerStats | None:
    return next((layer for layer in layers if flag in layer.flags), None)


def _layer(index: int, raw: RawLayer, input_std: float, t: Thresholds, can_die: bool,
           bounded: bool) -> LayerStats:
    pre = TensorStats(**{k: finite_or_none(raw.pre[k]) for k in TensorStats.__dataclass_fields__})
    post = PostStats(
        **{k: finite_or_none(raw.post[k]) for k in TensorStats.__dataclass_fields__},
        dead=raw.pre["dead"] if can_die else None,
        saturated=raw.post["saturated"] if bounded else None,
    )
    finite = all(math.isfinite(raw.pre[k]) and math.isfinite(raw.post[k]) for k in ("min", "max"))
    std = raw.post["std"]
    flags = {
        "nonfinite": not finite,
        "symmetric": finite and raw.fan_out > 1 and raw.pre["spread"] <= t.symmetric,
        "exploding": finite and std > t.exploding * input_std,
        "vanishing": finite and std < t.vanishing * input_std,
        "saturated": post.saturated is not None and post.saturated > t.saturated,
        "dead": post.dead is not None and post.dead > t.dead,
    }
    return LayerStats(index, raw.fan_in, raw.fan_out, pre, post,
                      tuple(flag for flag in FLAGS if flags[flag]))
