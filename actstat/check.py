"""Check: a new Report against a baseline Report, per scheme, layer and metric; drift bounds.

Definitions (defaults in actstat/config.py, `CheckConfig`):

- A std metric (pre_std, post_std, grad_std) passes when |ln(obtained / expected)| <= ln(1 + rtol):
  relative, symmetric in log space, so 0.95x and 1.05x are equally far. With the default rtol
  0.05 a 10 % change of any std fails, while the 1e-6 differences of another thread count or a
  torch patch release pass. Both zero passes; one zero (or one null) fails.
- A mean metric (pre_mean, post_mean, grad_mean) passes when |obtained - expected| <= atol x the
  expected std of the same tensor: an absolute tolerance in units of the layer's own scale, so a
  mean of 1e16 in an exploding net is held to the same standard as a mean of 0.2.
- Drift bound (no baseline needed): a scheme fails when a hidden layer's post std leaves
  [s / F, s x F], s = the first hidden layer's post std.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actstat.errors import ActstatError
from actstat.report import LayerStats, Report

# metric -> (which tensor, which statistic)
METRICS: dict[str, tuple[str, str]] = {
    "pre_std": ("pre", "std"),
    "post_std": ("post", "std"),
    "grad_std": ("grad", "std"),
    "pre_mean": ("pre", "mean"),
    "post_mean": ("post", "mean"),
    "grad_mean": ("grad", "mean"),
}


@dataclass(frozen=True)
class Drift:
    """One compared value that left its tolerance."""

    scheme: str
    layer: int
    metric: str
    expected: float | None
    obtained: float | None
    difference: float | None  # ln ratio for stds, obtained - expected for means
    tolerance: float  # ln(1 + rtol) for stds, atol x expected std for means


@dataclass(frozen=True)
class BoundBreach:
    """A layer whose post std left [s / F, s x F] of its scheme's first layer."""

    scheme: str
    layer: int
    first_std: float | None
    std: float | None
    factor: float


@dataclass(frozen=True)
class CheckResult:
    compared: int  # values compared against the baseline (0 without one)
    drifts: tuple[Drift, ...]
    breaches: tuple[BoundBreach, ...]
    flagged: tuple[tuple[str, int, str], ...]  # (scheme, layer, flag) for --fail-on
    config_changes: tuple[str, ...]  # "model.depth: 20 -> 10", when a config replaced the baseline's
    schemes: tuple[str, ...]  # every scheme checked, in order
    metrics: tuple[str, ...]
    bound_checked: bool = False  # --max-drift ran
    flags_checked: bool = False  # --fail-on ran

    @property
    def passed(self) -> bool:
        return not (self.drifts or self.breaches or self.flagged)


def tolerance_for(metric: str, tolerances: Mapping[str, Mapping[str, float]], rtol: float,
                  atol: float) -> float:
    """The tolerance of one metric: its own rtol/atol if the config sets them, else the defaults."""
    own = tolerances.get(metric, {})
    if metric.endswith("_std"):
        return math.log1p(own.get("rtol", rtol))
    return own.get("atol", atol)


def compare(expected: Report, obtained: Report, *, metrics: tuple[str, ...], rtol: float,
            atol: float, tolerances: Mapping[str, Mapping[str, float]]
            ) -> tuple[int, list[Drift], list[str]]:
    """Every (scheme, layer, metric) of the baseline against the new report, matched by position:
    (values compared, drifts, the scheme labels compared). A scheme or layer present on one side
    only is a drift with a missing value; a scheme whose label changed reads `old → new`.
    """
    drifts: list[Drift] = []
    labels: list[str] = []
    compared = 0
    for index in range(max(len(expected.runs), len(obtained.runs))):
        old = expected.runs[index] if index < len(expected.runs) else None
        new = obtained.runs[index] if index < len(obtained.runs) else None
        label = old.scheme if old is not None else new.scheme  # type: ignore[union-attr]
        if old is not None and new is not None and old.scheme != new.scheme:
            label = f"{old.scheme} → {new.scheme}"
        labels.append(label)
        old_layers = old.layers if old is not None else ()
        new_layers = new.layers if new is not None else ()
        for position in range(max(len(old_layers), len(new_layers))):
            a = old_layers[position] if position < len(old_layers) else None
            b = new_layers[position] if position < len(new_layers) else None
            for metric in metrics:
                compared += 1
                drift = _compare_value(label, position + 1, metric, a, b,
                                       tolerance_for(metric, tolerances, rtol, atol))
                if drift is not None:
                    drifts.append(drift)
    return compared, drifts, labels


def _value(layer: LayerStats | None, metric: str) -> tuple[bool, float | None]:
    """(present, value): a layer or tensor that does not exist is absent, not zero."""
    if layer is None:
        return False, None
    tensor, statistic = METRICS[metric]
    stats = getattr(layer, tensor)
    if stats is None:
        return False, None
    return True, getattr(stats, statistic)


def _compare_value(scheme: str, layer: int, metric: str, a: LayerStats | None,
                   b: LayerStats | None, tolerance: float) -> Drift | None:
    has_a, expected = _value(a, metric)
    has_b, obtained = _value(b, metric)
    if not has_a and not has_b:
        return None
    if expected is None or obtained is None:
        if expected is None and obtained is None and has_a and has_b:
            return None  # both not finite
        return Drift(scheme, layer, metric, expected, obtained, None, tolerance)
    if metric.endswith("_std"):
        if expected == obtained:
            return None
        if expected <= 0 or obtained <= 0:
            return Drift(scheme, layer, metric, expected, obtained, math.inf, tolerance)
        difference = math.log(obtained / expected)
        return None if abs(difference) <= tolerance else Drift(
            scheme, layer, metric, expected, obtained, difference, tolerance)
    tensor, _ = METRICS[metric]
    scale = getattr(getattr(a, tensor), "std", None) or 0.0
    bound = tolerance * scale
    difference = obtained - expected
    return None if abs(difference) <= bound else Drift(
        scheme, layer, metric, expected, obtained, difference, bound)


def drift_bound(report: Report, factor: float) -> list[BoundBreach]:
    """Layers whose post std left [s / factor, s x factor], s = their scheme's first layer's."""
    breaches = []
    for run in report.runs:
        first = run.layers[0].post.std
        for layer in run.layers:
            std = layer.post.std
            inside = (first is not None and std is not None and first > 0
                      and first / factor <= std <= first * factor)
            if not inside:
                breaches.append(BoundBreach(run.scheme, layer.index, first, std, factor))
    return breaches


def config_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """`key: old → new` for every dotted key whose value differs between two resolved configs,
    leaving out the check section itself (how values are compared is not what was measured)."""
    flat_before = _flatten({k: v for k, v in before.items() if k != "check"})
    flat_after = _flatten({k: v for k, v in after.items() if k != "check"})
    changes = []
    for key in sorted(set(flat_before) | set(flat_after)):
        old, new = flat_before.get(key, "(absent)"), flat_after.get(key, "(absent)")
        if old != new:
            changes.append(f"{key}: {_short(old)} → {_short(new)}")
    return changes


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"init[0].mode": "fan_in", ...}: every leaf of a config under its dotted key."""
    flat: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for key, value in node.items():
            flat |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return flat
    if isinstance(node, list) and node:
        for index, value in enumerate(node):
            flat |= _flatten(value, f"{prefix}[{index}]")
        return flat
    return {prefix: node}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def consistent(report: Report, depth: int, scheme_count: int, origin: str) -> None:
    """A baseline's layers must match its own config: every run has `depth` layers, one run per
    scheme. Raise an ActstatError that says what does not match."""
    if len(report.runs) != scheme_count:
        raise ActstatError(f"{origin}: holds {len(report.runs)} scheme(s) but its config describes "
                           f"{scheme_count}: the file was edited or truncated")
    for run in report.runs:
        if len(run.layers) != depth or [layer.index for layer in run.layers] != list(
                range(1, depth + 1)):
            raise ActstatError(f"{origin}: scheme '{run.scheme}' has {len(run.layers)} layers "
                               f"but its config says depth {depth}: the file was edited or "
                               "truncated")
