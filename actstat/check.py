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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actstat.errors import ActstatError
from actstat.report import API_SOURCE, LayerStats, Report, Run

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
    # a user's model: the row's name as its table shows it (`0`, `blocks.1`; `old → new` when it
    # changed), since `layer` counts rows; "" for the MLP, whose rows are numbered
    name: str = ""


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
                    drifts.append(replace(drift, name=_row_name(old, a, new, b)))
    return compared, drifts, labels


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
    """A baseline's layers must match its own config: every run has `depth` layers (None: a
    user's model, whose layers are found by running it), one run per scheme. Raise an
    ActstatError that says what does not match."""
    if len(report.runs) != scheme_count:
        raise ActstatError(f"{origin}: holds {len(report.runs)} scheme(s) but its config describes "
                           f"{scheme_count}: the file was edited or truncated")
    for run in report.runs if depth is not None else ():
        if len(run.layers) != depth or [layer.index for layer in run.layers] != list(
                range(1, depth + 1)):
            raise ActstatError(f"{origin}: scheme '{run.scheme}' has {len(run.layers)} layers "
                               f"but its config says depth {depth}: the file was edited or "
                               "truncated")


# ----------------------------------------------------------------------------------------------
# the `check` command's orchestration: what to run, then how the new report fares


@dataclass(frozen=True)
class CheckRequest:
    """What `actstat check` was asked, its options parsed."""

    target: Path | None  # a .json baseline, or a YAML config (no baseline), or None (defaults)
    config: Path | None = None  # --config: run this file instead of the baseline's
    stored_config: bool = False  # --stored-config: run the copy stored in the baseline
    overrides: Mapping[str, Any] = field(default_factory=dict)  # run options, as dotted keys
    max_drift: float | None = None
    fail_on: frozenset[str] = frozenset()
    update: bool = False


@dataclass(frozen=True)
class CheckPlan:
    """The config to measure and what to hold it to, decided before anything is measured."""

    request: CheckRequest
    config: Any  # the resolved Config to measure
    config_path: Path | None  # the YAML file measured; None: the baseline's stored copy/defaults
    baseline: Report | None
    changes: tuple[str, ...]  # the measured config against the baseline's, `key: old → new`
    notes: tuple[str, ...]  # one line each, for stderr: which config ran and why


def is_baseline(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() == ".json"


def plan(request: CheckRequest) -> CheckPlan:
    """Which config to measure. With a baseline: the config file it was made from, re-read when
    it still exists (so an edited YAML is measured, and its differences listed), else the copy
    stored inside it; `--config` names another file, `--stored-config` forces the stored copy.
    Usage mistakes raise an ActstatError."""
    from actstat.config import config_from_dict, load_config
    from actstat.pipeline import schemes
    from actstat.report import config_file_of, read_report

    target, baseline = request.target, is_baseline(request.target)
    if target is not None and not baseline and request.config is not None:
        raise ActstatError(f"give the config once: '{target}' is not a .json baseline, and "
                           "--config names another config")
    if request.config is not None and request.stored_config:
        raise ActstatError("--config and --stored-config: choose one config to run")
    if not baseline and request.max_drift is None and not request.fail_on:
        raise ActstatError("nothing to check against: give a baseline (a .json report), "
                           "--max-drift F or --fail-on FLAGS")
    if request.update and not baseline:
        raise ActstatError("--update rewrites a baseline: give one (a .json report)")
    if request.stored_config and not baseline:
        raise ActstatError("--stored-config runs a baseline's stored config: give a baseline "
                           "(a .json report)")
    overrides = dict(request.overrides)
    if not baseline:
        config_path = request.config if request.config is not None else target
        return CheckPlan(request, load_config(config_path, overrides), config_path, None, (), ())
    assert target is not None
    base = read_report(target)
    if base.config.get("source") == API_SOURCE:
        raise ActstatError(f"{target}: was made by actstat.profile in Python: there is no config "
                           "to measure again; save a baseline with `actstat baseline --model "
                           "FILE.py:FACTORY` to check it here")
    own = config_from_dict(base.config, str(target))
    # a compare of several models (schemes with model keys) has as many row counts as models
    plain = own.model.plain_mlp and not own.mixed_models
    consistent(base, own.model.depth if plain else None, len(schemes(own)), str(target))
    notes: list[str] = []
    config_path = request.config
    recorded = config_file_of(base, target)
    if config_path is None and recorded is not None and not request.stored_config:
        if recorded.is_file():
            config_path = recorded
        else:
            notes.append(f"actstat: {target}: its config file {recorded} is gone; checking the "
                         "config stored in the baseline")
    if config_path is not None:
        resolved = load_config(config_path, overrides)
    else:
        resolved = config_from_dict(base.config, str(target), overrides)
    # against the baseline's config as read today (`own`): a key added since it was written
    # (data.vocab in a schema 1 report) is at its default on both sides, not a change
    changes = tuple(config_changes(own.model_dump(mode="json"), resolved.model_dump(mode="json")))
    source = (f"{config_path}" if config_path is not None
              else f"the config stored in {target}")
    if changes:
        notes.append(f"actstat: checking {source}: {len(changes)} change(s) against the "
                     f"baseline; first: {changes[0]}")
    return CheckPlan(request, resolved, config_path, base, changes, tuple(notes))


def evaluate(plan: CheckPlan, report: Report) -> CheckResult:
    """The measured report against the plan's baseline, drift bound and flags."""
    settings = plan.config.check
    request = plan.request
    compared, drifts, labels = 0, [], [run.scheme for run in report.runs]
    if plan.baseline is not None:
        compared, drifts, labels = compare(
            plan.baseline, report, metrics=tuple(settings.metrics), rtol=settings.rtol,
            atol=settings.atol,
            tolerances={m: t.model_dump(exclude_none=True) for m, t in settings.tolerances.items()})
    breaches = (tuple(drift_bound(report, request.max_drift)) if request.max_drift is not None
                else ())
    flagged = tuple((run.scheme, layer.index, flag) for run in report.runs
                    for layer in run.layers for flag in layer.flags if flag in request.fail_on)
    return CheckResult(
        compared=compared,
        drifts=tuple(drifts),
        breaches=breaches,
        flagged=flagged,
        config_changes=plan.changes,
        schemes=tuple(labels),
        metrics=tuple(settings.metrics) if plan.baseline is not None else (),
        bound_checked=request.max_drift is not None,
        flags_checked=bool(request.fail_on),
        # --update rewrites the baseline when only drift failed (a bound or a flag never)
        updated=request.update and plan.baseline is not None and not breaches and not flagged,
    )


def updated_baseline(plan: CheckPlan, report: Report) -> Report:
    """The report that `--update` writes over the baseline: it records the config file it was
    measured from (the baseline's own record when the stored copy ran)."""
    from actstat.report import located

    assert plan.baseline is not None and plan.request.target is not None
    if plan.config_path is None:
        return replace(report, config_file=plan.baseline.config_file)
    return located(report, plan.config_path, plan.request.target)
