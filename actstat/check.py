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

A training baseline (a report written by `actstat train`, whose runs carry trajectories) is
trained again, and its trajectory compared at every step both runs recorded, matched by step
number, layers matched by position: `loss`, `train_std` and `train_grad_std` as std metrics
(log ratio, rtol), `train_mean` as a mean (atol x the expected std of that layer at that step),
`train_near_zero` and `train_dead` as fractions (|obtained - expected| <= atol). Recorded steps
that differ (another steps or every, a run stopped by a non-finite loss) fail the check, and the
first step that drifted is the first step at which a value left its tolerance or the steps
differ.

A coord check's baseline (a report of `actstat coord-check`) is checked again and every layer's
slope compared at every step both hold, layers matched by position: |obtained - expected| <=
check.slope_atol; a slope that is undefined on one side only (a size of 0, a run that
diverged) fails.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import zip_longest
from typing import Any

from actstat.analysis import signal_rows
from actstat.errors import ActstatError
from actstat.records import (
    DEAD_BY_FLOOR_VERSION,
    HEAD_ROW_VERSION,
    LayerStats,
    Report,
    Run,
    Trajectory,
    TrajectoryLayer,
)

# metric -> (which tensor, which statistic)
METRICS: dict[str, tuple[str, str]] = {
    "pre_std": ("pre", "std"),
    "post_std": ("post", "std"),
    "grad_std": ("grad", "std"),
    "pre_mean": ("pre", "mean"),
    "post_mean": ("post", "mean"),
    "grad_mean": ("grad", "mean"),
}
# trajectory metric -> its column: the Trajectory's (loss) or each TrajectoryLayer's
TRAJECTORY_METRICS: dict[str, str] = {
    "loss": "loss",
    "train_std": "std",
    "train_mean": "mean",
    "train_grad_std": "grad_std",
    "train_near_zero": "near_zero",
    "train_dead": "dead",
}
LOSS_LAYER = 0  # a Drift's `layer` for the loss, which belongs to no layer


def is_ratio(metric: str) -> bool:
    """Compared as a log ratio (stds and the loss: positive, scale-free), not a difference."""
    return metric.endswith("_std") or metric == "loss"


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
    # a user's model: the row's name as its table shows it (`0`, `blocks.1`; `old → new` when it
    # changed), since `layer` counts rows; "" for the MLP, whose rows are numbered; through
    # training always the trajectory's row name (`1`, `head`, `blocks.1`), "" for the loss
    name: str = ""
    step: int | None = None  # the recorded training step; None: at init (the measurement)


@dataclass(frozen=True)
class StepsChange:
    """A scheme whose recorded training steps differ from its baseline's (another steps or
    every, or a run that stopped early): the values are compared at the steps both recorded."""

    scheme: str
    expected: tuple[int, ...]
    obtained: tuple[int, ...]
    stopped: str | None = None  # why the new run stopped early: "nonfinite", "interrupted"
    stopped_at: int | None = None

    @property
    def first(self) -> int | None:
        """The first step recorded on one side only."""
        differing = set(self.expected) ^ set(self.obtained)
        return min(differing) if differing else None


@dataclass(frozen=True)
class BoundBreach:
    """A layer whose post std left [s / F, s x F] of its scheme's first layer."""

    scheme: str
    layer: int
    first_std: float | None
    std: float | None
    factor: float
    name: str = ""  # a user's model: the row's name (see Drift)


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
    updated: bool = False  # --update rewrote the baseline with these values
    # a training baseline: values compared through training (0: none compared, or no
    # trajectories), its metrics, and the schemes whose recorded steps differ
    trajectory_compared: int = 0
    trajectory_metrics: tuple[str, ...] = ()
    steps_changes: tuple[StepsChange, ...] = ()
    trained: bool = False  # the baseline held trajectories and training ran again
    coord: bool = False  # the baseline was a coord check's: its slopes were compared

    @property
    def passed(self) -> bool:
        return not (self.drifts or self.breaches or self.flagged or self.steps_changes)

    @property
    def init_drifts(self) -> tuple[Drift, ...]:
        return tuple(d for d in self.drifts if d.step is None)

    @property
    def trajectory_drifts(self) -> tuple[Drift, ...]:
        return tuple(d for d in self.drifts if d.step is not None)

    def first_step(self, scheme: str | None = None) -> int | None:
        """The first recorded step that drifted (a value out of tolerance, or a step recorded on
        one side only), of one scheme or of all; None: none did."""
        steps = [d.step for d in self.trajectory_drifts
                 if d.step is not None and scheme in (None, d.scheme)]
        steps += [c.first for c in self.steps_changes
                  if c.first is not None and scheme in (None, c.scheme)]
        return min(steps) if steps else None


def tolerance_for(metric: str, tolerances: Mapping[str, Mapping[str, float]], rtol: float,
                  atol: float) -> float:
    """The tolerance of one metric: its own rtol/atol if the config sets them, else the defaults."""
    own = tolerances.get(metric, {})
    if is_ratio(metric):
        return math.log1p(own.get("rtol", rtol))
    return own.get("atol", atol)


def _paired_runs(expected: Report, obtained: Report
                 ) -> Iterator[tuple[str, Run | None, Run | None]]:
    """The two reports' schemes matched by position: (label, baseline's, new), either side None
    where the other report has more schemes; a label that changed reads `old → new`."""
    for index in range(max(len(expected.runs), len(obtained.runs))):
        old = expected.runs[index] if index < len(expected.runs) else None
        new = obtained.runs[index] if index < len(obtained.runs) else None
        label = old.scheme if old is not None else new.scheme  # type: ignore[union-attr]
        if old is not None and new is not None and old.scheme != new.scheme:
            label = f"{old.scheme} → {new.scheme}"
        yield label, old, new


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
    for label, old, new in _paired_runs(expected, obtained):
        labels.append(label)
        old_layers = old.layers if old is not None else ()
        new_layers = new.layers if new is not None else ()
        if old is not None and new is not None and headless(expected, old):
            new_layers = new_layers[:len(old_layers)]  # its hidden layers: the head is new
        for position in range(max(len(old_layers), len(new_layers))):
            a = old_layers[position] if position < len(old_layers) else None
            b = new_layers[position] if position < len(new_layers) else None
            for metric in metrics:
                if not (_value(a, metric)[0] or _value(b, metric)[0]):
                    continue  # a tensor neither side has (the head's pre): nothing compared
                compared += 1
                drift = _compare_value(label, position + 1, metric, a, b,
                                       tolerance_for(metric, tolerances, rtol, atol))
                if drift is not None:
                    drifts.append(replace(drift, name=_row_name(old, a, new, b)))
    return compared, drifts, labels


COORD_SCHEME = "coord check"  # a Drift's `scheme` for a coord check's slopes


def compare_slopes(expected: Report, obtained: Report, *, atol: float
                   ) -> tuple[int, list[Drift], list[StepsChange]]:
    """A coord check against its baseline: (slopes compared, those out of tolerance, a steps
    change when the steps differ). Layers by position, named by the new run's."""
    a, b = expected.coord_check, obtained.coord_check
    if a is None or b is None:
        raise ActstatError("a coord check's baseline is checked against a coord check")
    changes = [] if a.steps == b.steps else [StepsChange(COORD_SCHEME, a.steps, b.steps)]
    compared, drifts = 0, []
    for index, (old, new) in enumerate(zip_longest(a.layers, b.layers), start=1):
        name = (new or old).name if (new or old) is not None else str(index)
        for step in (s for s in a.steps if s in b.steps):
            x = old.slope[a.steps.index(step)] if old is not None else None
            y = new.slope[b.steps.index(step)] if new is not None else None
            compared += 1
            if x is None and y is None and old is not None and new is not None:
                continue
            if x is None or y is None or abs(y - x) > atol:
                drifts.append(Drift(COORD_SCHEME, index, "slope", x, y,
                                    None if x is None or y is None else y - x, atol,
                                    name=name, step=step))
    return compared, drifts, changes


def headless(report: Report, run: Run) -> bool:
    """A built-in MLP's run from before its head was a row (schema version 1 or 2): it holds
    the hidden layers only, and is compared on those."""
    return report.schema_version < HEAD_ROW_VERSION and run.model is None


def _row_name(old: Run | None, a: LayerStats | None, new: Run | None,
              b: LayerStats | None) -> str:
    """A user's model's row name on either side (`old → new` when it differs); "" for the MLP."""
    names = [layer.name for run, layer in ((old, a), (new, b))
             if run is not None and run.model is not None and layer is not None]
    return " → ".join(dict.fromkeys(names))


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
    tensor, _ = METRICS[metric]
    scale = getattr(getattr(a, tensor, None), "std", None) or 0.0
    out = _out_of_tolerance(metric, (has_a, expected), (has_b, obtained), tolerance, scale)
    return None if out is None else Drift(scheme, layer, metric, expected, obtained, *out)


def _out_of_tolerance(metric: str, a: tuple[bool, float | None], b: tuple[bool, float | None],
                      tolerance: float, scale: float) -> tuple[float | None, float] | None:
    """None when (present, value) `b` is within tolerance of `a`; else (difference, tolerance
    as applied): a log ratio for is_ratio metrics, else obtained - expected within tolerance x
    `scale` (a mean: the expected std of that tensor; a fraction: 1)."""
    (has_a, expected), (has_b, obtained) = a, b
    if not has_a and not has_b:
        return None
    if expected is None or obtained is None:
        if expected is None and obtained is None and has_a and has_b:
            return None  # both not finite
        return None, tolerance
    if is_ratio(metric):
        if expected == obtained:
            return None
        if expected <= 0 or obtained <= 0:
            return math.inf, tolerance
        difference = math.log(obtained / expected)
        return None if abs(difference) <= tolerance else (difference, tolerance)
    bound = tolerance * scale
    difference = obtained - expected
    return None if abs(difference) <= bound else (difference, bound)


def compare_trajectories(expected: Report, obtained: Report, *, metrics: tuple[str, ...],
                         rtol: float, atol: float,
                         tolerances: Mapping[str, Mapping[str, float]]
                         ) -> tuple[int, list[Drift], list[StepsChange]]:
    """Every scheme's trajectory against the baseline's at each step both recorded (schemes
    and layers matched by position, steps by number), step by step, the loss before the layers:
    (values compared, drifts in step order per scheme, schemes whose recorded steps differ)."""
    drifts: list[Drift] = []
    changes: list[StepsChange] = []
    compared = 0
    if expected.schema_version < DEAD_BY_FLOOR_VERSION:  # counted by another definition then
        metrics = tuple(m for m in metrics if m != "train_dead")
    for label, old, new in _paired_runs(expected, obtained):
        a = old.trajectory if old is not None else None
        b = new.trajectory if new is not None else None
        steps_a = a.steps if a is not None else ()
        steps_b = b.steps if b is not None else ()
        if steps_a != steps_b:
            changes.append(StepsChange(label, tuple(steps_a), tuple(steps_b),
                                       None if b is None else b.stopped,
                                       None if b is None else b.stopped_at))
        if a is None or b is None:
            continue
        at = {step: i for i, step in enumerate(b.steps)}
        for i, step in enumerate(a.steps):
            j = at.get(step)
            if j is None:
                continue
            for position in range(-1, max(len(a.layers), len(b.layers))):
                for metric in metrics:
                    if (position < 0) != (metric == "loss"):
                        continue  # the loss once per step, first; the layer metrics per layer
                    compared += 1
                    drift = _trajectory_drift(label, metric, step, a, i, b, j, position,
                                              tolerance_for(metric, tolerances, rtol, atol))
                    if drift is not None:
                        drifts.append(drift)
    return compared, drifts, changes


def _trajectory_drift(scheme: str, metric: str, step: int, a: Trajectory, i: int,
                      b: Trajectory, j: int, position: int, tolerance: float) -> Drift | None:
    """One value of two trajectories (a at index i, b at index j; `position`: the layer's)."""
    if metric == "loss":
        out = _out_of_tolerance(metric, (True, a.loss[i]), (True, b.loss[j]), tolerance, 0.0)
        return None if out is None else Drift(scheme, LOSS_LAYER, metric, a.loss[i], b.loss[j],
                                              *out, step=step)
    old = a.layers[position] if position < len(a.layers) else None
    new = b.layers[position] if position < len(b.layers) else None
    column = TRAJECTORY_METRICS[metric]
    expected, obtained = _point(old, column, i), _point(new, column, j)
    scale = 1.0  # a fraction's tolerance is atol itself
    if metric == "train_mean":
        scale = (old.std[i] if old is not None else None) or 0.0
    out = _out_of_tolerance(metric, expected, obtained, tolerance, scale)
    if out is None:
        return None
    name = " → ".join(dict.fromkeys(layer.name for layer in (old, new) if layer is not None))
    return Drift(scheme, position + 1, metric, expected[1], obtained[1], *out, name=name,
                 step=step)


def _point(layer: TrajectoryLayer | None, column: str, index: int) -> tuple[bool, float | None]:
    """(present, value): a layer that does not exist, or a dead fraction of an activation that
    cannot die, is absent."""
    values = getattr(layer, column) if layer is not None else None
    if values is None:
        return False, None
    return True, values[index]


def drift_bound(report: Report, factor: float) -> list[BoundBreach]:
    """Layers whose post std left [s / factor, s x factor], s = their scheme's first layer's;
    the signal's layers (the MLP's hidden layers: not the head, whose logits are not the
    signal)."""
    breaches = []
    for run in report.runs:
        first = run.layers[0].post.std
        for layer in signal_rows(run.layers):
            std = layer.post.std
            inside = (first is not None and std is not None and first > 0
                      and first / factor <= std <= first * factor)
            if not inside:
                breaches.append(BoundBreach(run.scheme, layer.index, first, std, factor,
                                            layer.name if run.model is not None else ""))
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


def consistent(report: Report, depth: int | None, scheme_count: int, origin: str) -> None:
    """A baseline's layers must match its own config: every run has `depth` hidden layers and
    the head (before schema version 3, the hidden layers alone; None: a user's model, whose
    layers are found by running it), one run per scheme. Raise an ActstatError that says what
    does not match."""
    if len(report.runs) != scheme_count:
        raise ActstatError(f"{origin}: holds {len(report.runs)} scheme(s) but its config describes "
                           f"{scheme_count}: the file was edited or truncated")
    for run in report.runs if depth is not None else ():
        rows = depth + (0 if headless(report, run) else 1)
        if len(run.layers) != rows or [layer.index for layer in run.layers] != list(
                range(1, rows + 1)):
            rows_said = (f"{depth} hidden layers" if headless(report, run)
                         else f"{depth} hidden layers and the head")
            raise ActstatError(f"{origin}: scheme '{run.scheme}' has {len(run.layers)} rows "
                               f"but its config says depth {depth} ({rows_said}): the file was "
                               "edited or truncated")
