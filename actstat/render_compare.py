"""Render the compare view: one row per scheme (where each one fails, at a glance) as a table
fitted to the terminal, CSV and Markdown; made from the Report alone (no printing)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from actstat.analysis import (
    Summary,
    signal_rows,
    summarise,
)
from actstat.layout import Column, Fitted, fit, left_out_note
from actstat.records import (
    FLAGS,
    HEALTHY,
    Report,
    Run,
)
from actstat.render import (
    FLAG_STYLES,
    column_rank,
    input_line,
    layer_label,
    number,
    percent,
    plain_text,
    scheme_lsuv_line,
    sparkline,
    to_markdown,
)


def sorted_runs(report: Report, sort: str) -> list[Run]:
    """`verdict`: healthy first, then from the mildest flag to the most fundamental (config order
    within a verdict); `gain`: closest to 1 (the signal kept) first; `name`: by scheme label."""
    runs = list(report.runs)
    if sort == "name":
        return sorted(runs, key=lambda run: run.scheme)
    if sort == "gain":
        def distance(run: Run) -> float:
            gain = summarise(run.layers, run.verdict).gain
            return abs(math.log(gain)) if gain else math.inf
        return sorted(runs, key=distance)
    severity = [HEALTHY, *reversed(FLAGS)]
    return sorted(runs, key=lambda run: severity.index(run.verdict))


COMPARE_COLUMNS = ("scheme", "verdict", "first flag", "post std 1 → L", "gain", "dead", "sat",
                   "grad 1/L", "train loss", "phase", "χ₁", "log std", "log grad")


# The order in which compare's columns leave a narrow terminal: the first named here leave first;
# the scheme always stays. At 80 columns the name, verdict, first flag, post std 1 -> L and
# grad 1/L remain; the sparklines shrink (a cell per stretch of layers) before any number leaves.
# With --steps the training loss (first → last) stays longest after the verdict: it is what
# the training probe is run for.
COMPARE_COLUMNS_LEAVING = ("phase", "log grad", "χ₁", "sat", "dead", "gain", "log std",
                           "grad 1/L", "first flag", "post std 1 → L", "train loss", "verdict")


SPARK_COLUMNS = ("log std", "log grad")


TEXT_COLUMNS = ("scheme", "verdict", "first flag", "phase", *SPARK_COLUMNS)


def _compare_cells(run: Run, summary: Summary, spark_width: int = 40) -> dict[str, str]:
    first = "—"
    if summary.first_flag is not None:
        index, flag = summary.first_flag
        first = f"{flag} @ {layer_label(run.layers[index - 1], run)}"
    signal = signal_rows(run.layers)  # the sparklines draw the signal, not the logits
    grads = [layer.grad.std if layer.grad else None for layer in signal]
    return {
        "scheme": run.scheme,
        "verdict": run.verdict,
        "first flag": first,
        "post std 1 → L": f"{number(summary.first_std)} → {number(summary.last_std)}",
        "gain": number(summary.gain),
        "dead": percent(summary.worst_dead),
        "sat": percent(summary.worst_saturated),
        "grad 1/L": number(summary.grad_ratio),
        "train loss": ("—" if run.train is None else
                       f"{number(run.train.loss[0])} → {number(run.train.loss[-1])}"),
        "phase": run.theory.phase if run.theory else "—",
        "χ₁": number(run.theory.chi1) if run.theory else "—",
        "log std": sparkline([layer.post.std for layer in signal], spark_width),
        "log grad": (sparkline(grads, spark_width) if any(g is not None for g in grads)
                     else "—"),
    }


def compare_columns(runs: Sequence[Run]) -> list[str]:
    """The compare table's columns: a user's model has no mean-field theory, so there are no
    phase or χ₁ columns when no run has one; a train loss column only with the training probe."""
    return [name for name in COMPARE_COLUMNS
            if (name not in ("phase", "χ₁") or any(run.theory is not None for run in runs))
            and (name != "train loss" or any(run.train is not None for run in runs))]


def compare_table(report: Report, sort: str = "verdict", width: int | None = None) -> Fitted:
    """One row per scheme: where each one fails, at a glance; fitted to `width` terminal cells
    (None: full width)."""
    # the MLP's hidden layers (its head is not one); every row of a user's model
    counts = sorted({len(signal_rows(run.layers)) if run.model is None else len(run.layers)
                     for run in report.runs}) or [0]
    depth = counts[-1]
    runs = sorted_runs(report, sort)
    summaries = [summarise(run.layers, run.verdict) for run in runs]
    rows = [_compare_cells(run, summary) for run, summary in zip(runs, summaries)]
    names = compare_columns(runs)
    styled: dict[str, list[Text]] = {name: [] for name in names}
    for run, summary, cells in zip(runs, summaries, rows):
        styles = {"verdict": f"bold {FLAG_STYLES[run.verdict]}"}
        if summary.first_flag:
            styles["first flag"] = FLAG_STYLES[summary.first_flag[1]]
        for name in names:
            styled[name].append(Text(cells[name], style=styles.get(name, "")))

    def spark(name: str) -> Any:
        return lambda size: [Text(_compare_cells(run, summary, size)[name])
                              for run, summary in zip(runs, summaries)]

    spec = [
        Column(name, styled[name], justify="left" if name in TEXT_COLUMNS else "right",
               rank=column_rank(name, COMPARE_COLUMNS_LEAVING), wrap=name in ("scheme", "first flag"),
               min_width=16 if name == "scheme" else max(len(f) for f in FLAGS),
               spark=spark(name) if name in SPARK_COLUMNS else None,
               spark_width=min(depth, 40) if name in SPARK_COLUMNS else 0)
        for name in names
    ]
    what = "hidden layers" if all(run.model is None for run in runs) else "layers"
    # schemes of different models (a mixed compare) have different numbers of rows
    many = str(depth) if len(counts) == 1 else f"{counts[0]} to {depth}"
    return fit(spec, width, title=f"{len(report.runs)} schemes, {many} {what}, "
               f"{report.input.source}")


def compare_renderables(report: Report, sort: str = "verdict",
                        width: int | None = None) -> list[RenderableType]:
    """The compare table, then the note that says which columns left to fit `width`."""
    fitted = compare_table(report, sort, width)
    note = left_out_note(fitted.left_out, width)
    lsuv = [Text(scheme_lsuv_line(run)) for run in sorted_runs(report, sort) if run.lsuv]
    return [fitted.table] + ([note] if note else []) + lsuv + [
        Text(line, style="dim") for line in compare_notes(report, sort)]


def compare_notes(report: Report, sort: str = "verdict") -> list[str]:
    """Under the compare table, what each scheme's deliberate zeros did (a verdict says nothing
    of them): `fixup + tanh: zero by design (fixup): ...`."""
    return [f"{run.scheme}: {'; '.join(run.notes)}" for run in sorted_runs(report, sort)
            if run.notes]


def compare_text(report: Report, sort: str = "verdict") -> str:
    return plain_text(compare_renderables(report, sort), 1000)


COMPARE_CSV_COLUMNS = ("scheme", "init", "act", "verdict", "first_flag_layer", "first_flag",
                       "post_std_first", "post_std_last", "gain", "worst_dead",
                       "worst_saturated", "grad_ratio", "phase", "chi1", "q_star", "loss")


def compare_csv(report: Report, sort: str = "verdict") -> str:
    """One row per scheme, in the chosen order; empty cells for none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COMPARE_CSV_COLUMNS)
    for run in sorted_runs(report, sort):
        s = summarise(run.layers, run.verdict)
        row = {"scheme": run.scheme, "init": run.init, "act": run.act, "verdict": run.verdict,
               "first_flag_layer": s.first_flag[0] if s.first_flag else None,
               "first_flag": s.first_flag[1] if s.first_flag else None,
               "post_std_first": s.first_std, "post_std_last": s.last_std, "gain": s.gain,
               "worst_dead": s.worst_dead, "worst_saturated": s.worst_saturated,
               "grad_ratio": s.grad_ratio, "loss": run.loss,
               **({"phase": run.theory.phase, "chi1": run.theory.chi1,
                   "q_star": run.theory.q_star} if run.theory else {})}
        writer.writerow("" if row.get(c) is None else row[c] for c in COMPARE_CSV_COLUMNS)
    return buffer.getvalue()


def compare_markdown(report: Report, sort: str = "verdict", detail: bool = False) -> str:
    """The compare table in Markdown, then (with `detail`) every scheme's per-layer table."""
    names = compare_columns(report.runs)
    lines = ["## actstat compare", "", input_line(report), "",
             "| " + " | ".join(names) + " |",
             "|" + "|".join("---" if c in ("scheme", "verdict", "first flag", "phase", "log std",
                                           "log grad") else "---:" for c in names) + "|"]
    for run in sorted_runs(report, sort):
        cells = _compare_cells(run, summarise(run.layers, run.verdict))
        lines.append("| " + " | ".join(cells[c] for c in names) + " |")
    lines.append("")
    notes = compare_notes(report, sort)
    if notes:
        lines += [f"- {line}" for line in notes] + [""]
    if detail:
        lines += to_markdown(report).split("\n")[4:]
    return "\n".join(lines)
