"""Gate: the `check` command's orchestration: which config to measure against which baseline,
then how the new report fares (actstat/check.py's comparisons, drift bound and flags).

Usage mistakes raise an ActstatError; only the CLI prints and chooses the exit code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actstat.check import (
    COORD_SCHEME,
    METRICS,
    TRAJECTORY_METRICS,
    CheckResult,
    compare,
    compare_slopes,
    compare_trajectories,
    config_changes,
    consistent,
    drift_bound,
    headless,
)
from actstat.config import (
    COORD_CHECK_DEPTH,
    anchored,
    config_from_dict,
    config_paths,
    load_config,
    with_paths,
)
from actstat.errors import ActstatError
from actstat.pipeline import schemes
from actstat.records import API_SOURCE, DEAD_BY_FLOOR_VERSION
from actstat.report import Report, config_file_of, located, read_report


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
    training: bool = False  # the baseline holds trajectories: train again, not only measure
    coord: bool = False  # the baseline is a coord check's: check the widths again


def is_baseline(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() == ".json"


def plan(request: CheckRequest) -> CheckPlan:
    """Which config to measure. With a baseline: the config file it was made from, re-read when
    it still exists (so an edited YAML is measured, and its differences listed), else the copy
    stored inside it; `--config` names another file, `--stored-config` forces the stored copy.
    Usage mistakes raise an ActstatError."""
    target, baseline = request.target, is_baseline(request.target)
    for yaml_path in (None if baseline else target, request.config):  # before what is missing
        if yaml_path is not None and not yaml_path.exists():
            raise ActstatError(f"{yaml_path}: config file not found")  # as load_config says it
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
    if base.coord_check is not None:
        return _coord_plan(request, base, target)
    recorded = config_file_of(base, target)
    stored = _stored_config(base.config, recorded)
    own = config_from_dict(stored, str(target))
    interrupted = [run for run in base.runs
                   if run.trajectory is not None and run.trajectory.stopped == "interrupted"]
    if interrupted:
        raise ActstatError(f"{target}: its training was interrupted (Ctrl-C) in scheme "
                           f"'{interrupted[0].scheme}': a training baseline needs every step; "
                           "train it again to the end")
    # a compare of several models (schemes with model keys) has as many row counts as models
    plain = own.model.plain_mlp and not own.mixed_models
    consistent(base, own.model.depth if plain else None, len(schemes(own)), str(target))
    training = any(run.trajectory is not None for run in base.runs)
    notes: list[str] = []
    if training and base.schema_version < DEAD_BY_FLOOR_VERSION and \
            "train_dead" in base.config.get("check", {}).get("metrics", ()):
        notes.append(f"actstat: {target}: its dead fractions were counted by an earlier "
                     "definition (schema version 2: exactly 0, not the activation's floor): "
                     "train_dead is not compared")
    if any(headless(base, run) for run in base.runs):
        notes.append(f"actstat: {target}: written by an earlier actstat (schema version "
                     f"{base.schema_version}), it holds no head row: the hidden layers are "
                     "compared; `actstat baseline` again to hold the head to it too")
    config_path = _config_path(request, recorded, target, notes)
    if config_path is not None:
        resolved = load_config(config_path, overrides)
    else:
        resolved = config_from_dict(stored, str(target), overrides)
    # against the baseline's config as read today (`own`): a key added since it was written
    # (data.vocab in a schema 1 report) is at its default on both sides, not a change; file
    # paths compared as the files they name (`sub/nets.py` and `/abs/sub/nets.py` are one)
    changes = _changes(own, resolved)
    source = (f"{config_path}" if config_path is not None
              else f"the config stored in {target}")
    if changes:
        notes.append(f"actstat: checking {source}: {len(changes)} change(s) against the "
                     f"baseline; first: {changes[0]}")
    if not training and not any(m in METRICS for m in resolved.check.metrics):
        raise ActstatError(f"check.metrics: {', '.join(resolved.check.metrics)} compare a "
                           f"training baseline's trajectories, and {target} holds none (write "
                           "one with `actstat train CONFIG -f json -o FILE`)")
    return CheckPlan(request, resolved, config_path, base, changes, tuple(notes), training)


def _config_path(request: CheckRequest, recorded: Path | None, target: Path,
                 notes: list[str]) -> Path | None:
    """The config to check against: the one asked for, else the baseline's own file while it
    exists (a note when it is gone), else None: the copy stored in the baseline."""
    if request.config is not None or recorded is None or request.stored_config:
        return request.config
    if recorded.is_file():
        return recorded
    notes.append(f"actstat: {target}: its config file {recorded} is gone; checking the config "
                 "stored in the baseline")
    return None


def _coord_plan(request: CheckRequest, base: Report, target: Path) -> CheckPlan:
    """A coord check's baseline: its config file re-read (the command's own depth default
    applied, as it was), or the stored copy; --max-drift bounds a run's layers, not slopes."""
    if base.config.get("source") == "actstat.coord_check":
        raise ActstatError(f"{target}: was made by actstat.coord_check in Python: there is no "
                           "config to check again; write the baseline with `actstat "
                           "coord-check --model FILE.py:FACTORY --width-arg NAME -f json -o "
                           "FILE`")
    if request.max_drift is not None:
        raise ActstatError("--max-drift bounds a run's layers; a coord check's baseline is "
                           "checked on its slopes (check.slope_atol)")
    recorded = config_file_of(base, target)
    stored = _stored_config(base.config, recorded)
    own = config_from_dict(stored, str(target))
    notes: list[str] = []
    config_path = _config_path(request, recorded, target, notes)
    overrides = dict(request.overrides)
    if config_path is not None:
        resolved = load_config(config_path, overrides,
                               defaults={"model.depth": COORD_CHECK_DEPTH})
    else:
        resolved = config_from_dict(stored, str(target), overrides)
    changes = _changes(own, resolved)
    if changes:
        source = f"{config_path}" if config_path is not None else f"the config stored in {target}"
        notes.append(f"actstat: checking {source}: {len(changes)} change(s) against the "
                     f"baseline; first: {changes[0]}")
    return CheckPlan(request, resolved, config_path, base, changes, tuple(notes), coord=True)


def _coord_result(plan: CheckPlan, report: Report) -> CheckResult:
    assert plan.baseline is not None
    compared, drifts, changes = compare_slopes(plan.baseline, report,
                                               atol=plan.config.check.slope_atol)
    check = report.coord_check
    flagged = tuple((COORD_SCHEME, index, flag) for index, layer in enumerate(
        check.layers if check is not None else (), start=1)
        for flag in layer.flags if flag in plan.request.fail_on)
    return CheckResult(
        compared=0, drifts=tuple(drifts), breaches=(), flagged=flagged,
        config_changes=plan.changes, schemes=(COORD_SCHEME,), metrics=(),
        flags_checked=bool(plan.request.fail_on),
        updated=plan.request.update and not flagged,
        trajectory_compared=compared, trajectory_metrics=("slope",),
        steps_changes=tuple(changes), trained=True, coord=True)


def _stored_config(config: Mapping[str, Any], recorded: Path | None) -> dict[str, Any]:
    """A baseline's stored config with its file paths taken relative to its config file's
    directory, as they are stored (`report.located`); a baseline from before, which stored them
    relative to the working directory where it was made, as it is when they name files here."""
    if recorded is None:
        return dict(config)
    now = anchored(config, recorded.parent)
    before, after = config_paths(config), config_paths(now)
    if any(Path(before[key]).exists() and not Path(after[key]).exists() for key in before):
        return dict(config)
    return now


def _changes(own: Any, resolved: Any) -> tuple[str, ...]:
    """`key: old → new` for every config key that differs, as the two configs spell it; file
    paths compared as the files they name (`sub/nets.py` and `/abs/sub/nets.py` are one)."""
    before, after = own.model_dump(mode="json"), resolved.model_dump(mode="json")
    changed = {change.split(": ", 1)[0] for change in config_changes(
        with_paths(before, os.path.abspath), with_paths(after, os.path.abspath))}
    return tuple(change for change in config_changes(before, after)
                 if change.split(": ", 1)[0] in changed)


def evaluate(plan: CheckPlan, report: Report) -> CheckResult:
    """The measured report against the plan's baseline, drift bound and flags."""
    if plan.coord:
        return _coord_result(plan, report)
    settings = plan.config.check
    request = plan.request
    compared, drifts, labels = 0, [], [run.scheme for run in report.runs]
    metrics = tuple(m for m in settings.metrics if m in METRICS)
    trajectory_metrics = tuple(
        m for m in settings.metrics if m in TRAJECTORY_METRICS
        and not (m == "train_dead" and plan.baseline is not None
                 and plan.baseline.schema_version < DEAD_BY_FLOOR_VERSION))
    tolerances = {m: t.model_dump(exclude_none=True) for m, t in settings.tolerances.items()}
    trajectory_compared, changes = 0, []
    if plan.baseline is not None:
        compared, drifts, labels = compare(
            plan.baseline, report, metrics=metrics, rtol=settings.rtol, atol=settings.atol,
            tolerances=tolerances)
    if plan.baseline is not None and plan.training:
        trajectory_compared, along, changes = compare_trajectories(
            plan.baseline, report, metrics=trajectory_metrics, rtol=settings.rtol,
            atol=settings.atol, tolerances=tolerances)
        drifts += along
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
        metrics=metrics if plan.baseline is not None else (),
        bound_checked=request.max_drift is not None,
        flags_checked=bool(request.fail_on),
        # --update rewrites the baseline when only drift failed (a bound or a flag never)
        updated=request.update and plan.baseline is not None and not breaches and not flagged,
        trajectory_compared=trajectory_compared,
        trajectory_metrics=trajectory_metrics if plan.training else (),
        steps_changes=tuple(changes),
        trained=plan.training,
    )


def updated_baseline(plan: CheckPlan, report: Report) -> Report:
    """The report that `--update` writes over the baseline: it records the config file it was
    measured from (the baseline's own record when the stored copy ran)."""
    assert plan.baseline is not None and plan.request.target is not None
    if plan.config_path is None:
        return replace(report, config_file=plan.baseline.config_file)
    return located(report, plan.config_path, plan.request.target)
