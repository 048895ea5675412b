"""Render a check's result: its summary lines, the drift table, Markdown, JSON and JUnit XML;
made from actstat/check.py's CheckResult alone (no printing)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from rich.console import RenderableType
from rich.text import Text

from actstat.check import BoundBreach, CheckResult, Drift, StepsChange, is_ratio
from actstat.layout import Column, fit, left_out_note
from actstat.records import (
    finite_or_none,
)
from actstat.render import FLAG_STYLES, column_rank, number, plain_text


def check_summary(result: CheckResult) -> list[str]:
    """One line per kind of check that ran: baseline drift, drift bound, flags."""
    lines = []
    at_init = result.init_drifts
    where = " at init" if result.trained else ""
    if result.compared:
        if at_init:
            first = at_init[0]
            lines.append(f"{len(at_init)} of {result.compared} values{where} drifted; first at "
                         f"layer {_row(first)} ({first.scheme}, {first.metric})")
        else:
            lines.append(f"all {result.compared} values{where} within tolerance "
                         f"({', '.join(result.metrics)})")
    if result.trained:
        lines += _trajectory_summary(result)
    if result.breaches:
        first_breach = result.breaches[0]
        lines.append(f"max drift {first_breach.factor:g}: {len(result.breaches)} layer(s) outside "
                     f"[s/{first_breach.factor:g}, s×{first_breach.factor:g}] of their first "
                     f"layer's post std; first at layer {_row(first_breach)} "
                     f"({first_breach.scheme})")
    if result.flagged:
        scheme, layer, flag = result.flagged[0]
        lines.append(f"--fail-on: {len(result.flagged)} flagged layer(s); first at layer {layer} "
                     f"({scheme}, {flag})")
    lines.append(UPDATED if result.updated else "passed" if result.passed else "FAILED")
    return lines


UPDATED = "baseline updated with the new values"


def _trajectory_summary(result: CheckResult) -> list[str]:
    """A training baseline's lines: the values through training, the first step that drifted
    (overall, and per scheme when there are several), schemes whose recorded steps differ."""
    lines = []
    along = result.trajectory_drifts
    what = "slopes" if result.coord else "values through training"
    if along:
        first = min(along, key=lambda d: d.step or 0)  # the earliest step; ties: scheme order
        lines.append(f"{len(along)} of {result.trajectory_compared} {what} drifted; first at "
                     f"step {first.step} ({first.scheme}, {_point(first)})")
    elif result.trajectory_compared:
        lines.append(f"all {result.trajectory_compared} {what} within tolerance "
                     f"({', '.join(result.trajectory_metrics)})")
    # the config keys that set the recorded steps, when a config changed them
    cause = [change for change in result.config_changes
             if change.startswith(("train.steps:", "train.every:"))]
    for change in result.steps_changes:
        lines.append(_steps_line(change) + (f"; the config changed {', '.join(cause)}"
                                            if cause else ""))
    if len(result.schemes) > 1 and (along or result.steps_changes):
        firsts = [(scheme, result.first_step(scheme)) for scheme in result.schemes]
        lines.append("first step that drifted: " + ", ".join(
            f"{scheme} {'none' if step is None else step}" for scheme, step in firsts))
    return lines


def _steps_line(change: StepsChange) -> str:
    both = len(set(change.expected) & set(change.obtained))
    stopped = {"nonfinite": f" (stopped at step {change.stopped_at}: the loss was not finite)",
               "interrupted": f" (interrupted at step {change.stopped_at})"}.get(
                   change.stopped or "", "")
    return (f"{change.scheme}: recorded steps differ from the baseline's: "
            f"{_steps(change.expected)} → {_steps(change.obtained)}{stopped}; first differing "
            f"step {change.first}; compared at the {both} step(s) both recorded")


def _steps(steps: tuple[int, ...]) -> str:
    """Recorded steps in a few words: all of them when few, else the first ones and the last."""
    if not steps:
        return "none"
    shown = ", ".join(map(str, steps)) if len(steps) <= 6 else (
        f"{', '.join(map(str, steps[:3]))}, …, {steps[-1]}")
    return f"{shown} ({len(steps)} steps)"


def _point(drift: Drift) -> str:
    """Where on a trajectory: the loss, or a layer's metric."""
    return "loss" if drift.metric == "loss" else f"layer {_row(drift)}, {drift.metric}"


def check_failure_lines(result: CheckResult, limit: int = 3) -> list[str]:
    """For stderr, whatever the chosen format and output: the summary in one line, then the
    first `limit` values out of tolerance (so a CI log says why it failed)."""
    lines = ["check FAILED: " + "; ".join(check_summary(result)[:-1])]
    for drift in result.drifts[:limit]:
        scheme, layer, metric, expected, obtained, difference, tolerance = _drift_cells(drift)
        where = (f"layer {layer}, {metric}" if drift.step is None
                 else f"step {drift.step}, {_point(drift)}")
        lines.append(f"  {scheme}, {where}: expected {expected}, obtained "
                     f"{obtained} ({difference}; tolerance {tolerance})")
    for breach in result.breaches[:max(0, limit - len(result.drifts))]:
        lines.append(f"  {breach.scheme}, layer {_row(breach)}: post std {number(breach.std)} "
                     f"outside ×{breach.factor:g} of {_first_row(breach)}'s "
                     f"{number(breach.first_std)}")
    return lines


def _row(found: Drift | BoundBreach) -> str:
    """The row as the run's table names it: a user's model's module path, the MLP's number;
    "—" for the loss, which is no layer's."""
    if isinstance(found, Drift) and found.metric == "loss":
        return "—"
    return found.name or str(found.layer)


def _first_row(breach: BoundBreach) -> str:
    return "the first layer" if breach.name else "layer 1"


DRIFT_COLUMNS = ("scheme", "layer", "metric", "expected", "obtained", "difference", "tolerance")


STEP_COLUMN = 1  # a training baseline's rows: "step" after the scheme ("init" at init)


def _drift_columns(result: CheckResult) -> tuple[str, ...]:
    if not result.trained:
        return DRIFT_COLUMNS
    return (*DRIFT_COLUMNS[:STEP_COLUMN], "step", *DRIFT_COLUMNS[STEP_COLUMN:])


def _check_rows(result: CheckResult) -> list[list[str]]:
    """The failing rows, each as its columns (_drift_columns) read."""
    rows = [_drift_cells(d) for d in result.drifts] + [_breach_cells(b) for b in result.breaches]
    if not result.trained:
        return rows
    steps = ["init" if d.step is None else str(d.step) for d in result.drifts]
    steps += ["init"] * len(result.breaches)
    return [[*row[:STEP_COLUMN], step, *row[STEP_COLUMN:]] for row, step in zip(rows, steps)]


def _drift_cells(drift: Drift) -> list[str]:
    if is_ratio(drift.metric):
        difference = "—" if drift.difference is None else (
            "×∞" if math.isinf(drift.difference) else f"×{math.exp(drift.difference):.4g}")
        tolerance = f"×{math.exp(drift.tolerance):.4g}"
    else:
        difference = "—" if drift.difference is None else f"{drift.difference:+.3g}"
        tolerance = f"±{number(drift.tolerance)}"
    return [drift.scheme, _row(drift), drift.metric, number(drift.expected),
            number(drift.obtained), difference, tolerance]


def _breach_cells(breach: BoundBreach) -> list[str]:
    return [breach.scheme, _row(breach), "post_std (bound)", number(breach.first_std),
            number(breach.std), "outside", f"×{breach.factor:g} of {_first_row(breach)}"]


# The order in which check's columns leave a narrow terminal (first named, first to leave).
DRIFT_COLUMNS_LEAVING = ("tolerance", "difference", "expected")


def check_renderables(result: CheckResult, width: int | None = None) -> list[RenderableType]:
    """The failing rows only, then the summary; config changes first when a config replaced the
    baseline's. The table is fitted to `width` terminal cells (None: full width)."""
    out: list[RenderableType] = []
    if result.config_changes:
        out.append(Text("config changes against the baseline:", style="bold"))
        out += [Text(f"  {change}") for change in result.config_changes]
        out.append(Text(""))
    rows = _check_rows(result)
    if rows:
        spec = [Column(name, [Text(row[i]) for row in rows],
                       justify="left" if name in ("scheme", "metric") else "right",
                       rank=column_rank(name, DRIFT_COLUMNS_LEAVING), wrap=name in ("scheme", "metric"),
                       min_width=12 if name == "scheme" else 4 if name == "step" else 8)
                for i, name in enumerate(_drift_columns(result))]
        fitted = fit(spec, width, title="values out of tolerance")
        out.append(fitted.table)
        note = left_out_note(fitted.left_out, width)
        if note:
            out.append(note)
        out.append(Text(""))
    for scheme, layer, flag in result.flagged:
        out.append(Text(f"{scheme}: layer {layer} carries {flag}", style=FLAG_STYLES[flag]))
    for line in check_summary(result):
        style = ("bold green" if line in ("passed", UPDATED) else "bold red" if line == "FAILED"
                 else "")
        out.append(Text(line, style=style))
    return out


def check_text(result: CheckResult) -> str:
    return plain_text(check_renderables(result), 1000)


def check_markdown(result: CheckResult, limit: int = 200) -> str:
    """For a CI job summary page ($GITHUB_STEP_SUMMARY): verdict, summary, failing rows."""
    mark = ("🔄 baseline updated" if result.updated else "✅ passed" if result.passed
            else "❌ failed")
    lines = [f"## actstat check: {mark}", ""]
    lines += [f"- {line}" for line in check_summary(result)[:-1]]
    if result.config_changes:
        lines += ["", "Config changes against the baseline:", ""]
        lines += [f"- `{change}`" for change in result.config_changes]
    rows = _check_rows(result)
    if rows:
        names = _drift_columns(result)
        lines += ["", "| " + " | ".join(names) + " |",
                  "|" + "|".join("---" if name in ("scheme", "metric") else "---:"
                                 for name in names) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows[:limit]]
        if len(rows) > limit:
            lines.append(f"\n… and {len(rows) - limit} more rows (see the JSON or JUnit report).")
    if result.flagged:
        lines += [""] + [f"- {scheme}: layer {layer} carries `{flag}`"
                         for scheme, layer, flag in result.flagged]
    return "\n".join(lines) + "\n"


def check_json(result: CheckResult) -> str:
    """The machine-readable result (docs/ci.md)."""
    body = {
        "passed": result.passed,
        "updated": result.updated,
        "summary": check_summary(result)[:-1],
        "compared": result.compared,
        "drifted": len(result.init_drifts),
        "metrics": list(result.metrics),
        "schemes": list(result.schemes),
        "config_changes": list(result.config_changes),
        "drifts": [{**asdict(d), "difference": finite_or_none(d.difference)}
                   for d in result.drifts],
        "breaches": [asdict(b) for b in result.breaches],
        "flagged": [{"scheme": s, "layer": layer, "flag": f} for s, layer, f in result.flagged],
        "trajectory": None if not result.trained else {
            "compared": result.trajectory_compared,
            "drifted": len(result.trajectory_drifts),
            "metrics": list(result.trajectory_metrics),
            "first_drift_step": result.first_step(),
            "schemes": [{"scheme": scheme, "first_drift_step": result.first_step(scheme)}
                        for scheme in result.schemes],
            "steps_changes": [asdict(change) for change in result.steps_changes],
        },
    }
    return json.dumps(body, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one test case per scheme and metric family (and per scheme for the drift bound
    and the flags when those ran), so CI lists each drifted layer set as a failed test."""
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="actstat check")
    cases = 0
    failures = 0

    def case(classname: str, name: str, failed: list[str], what: str = "layer(s)") -> None:
        nonlocal cases, failures
        cases += 1
        element = ET.SubElement(suite, "testcase", classname=classname, name=name)
        if failed:
            failures += 1
            message = (f"{len(failed)} {what} out of tolerance" if what
                       else "recorded steps differ from the baseline's")
            ET.SubElement(element, "failure", message=message).text = "\n".join(failed)

    if result.compared:
        for scheme in result.schemes:
            for metric in result.metrics:
                rows = [" | ".join(_drift_cells(d)[1:]) for d in result.init_drifts
                        if d.scheme == scheme and d.metric == metric]
                case(scheme, metric, [f"layer {row}" for row in rows])
    for scheme in result.schemes if result.trained else []:
        for metric in result.trajectory_metrics:
            rows = [f"step {d.step}, " + " | ".join(_drift_cells(d)[1:])
                    for d in result.trajectory_drifts if d.scheme == scheme and d.metric == metric]
            case(scheme, metric, rows, "value(s) through training")
        case(scheme, "recorded_steps", [_steps_line(c) for c in result.steps_changes
                                        if c.scheme == scheme], "")
    for scheme in result.schemes if result.breaches or result.bound_checked else []:
        rows = [f"layer {_row(b)}: post std {number(b.std)} vs {_first_row(b)} "
                f"{number(b.first_std)}"
                for b in result.breaches if b.scheme == scheme]
        case(scheme, "max_drift", rows)
    for scheme in result.schemes if result.flags_checked else []:
        rows = [f"layer {layer}: {flag}" for s, layer, flag in result.flagged if s == scheme]
        case(scheme, "fail_on", rows)
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
