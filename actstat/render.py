"""Render: a Report -> Rich tables, JSON, CSV or Markdown text. Nothing here prints."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from actstat.analysis import first_flagged
from actstat.report import HEALTHY, LayerStats, Report, Run

FORMATS = ("table", "json", "csv", "markdown")

# one colour per flag, used for the flags column, the flagged number cells and the verdict
FLAG_STYLES = {
    "nonfinite": "bold red",
    "symmetric": "magenta",
    "exploding": "red",
    "vanishing": "yellow",
    "saturated": "bright_magenta",
    "dead": "red",
    HEALTHY: "green",
}
# which number cell a flag colours
FLAG_CELLS = {"exploding": "post std", "vanishing": "post std", "dead": "dead",
              "saturated": "sat", "symmetric": "pre std"}
TABLE_COLUMNS = ("layer", "units", "pre mean", "pre std", "post mean", "post std", "near 0",
                 "dead", "sat", "flags")


def number(value: float | None) -> str:
    """4 significant digits, scientific outside [1e-3, 1e4); `—` for none (not finite / n.a.)."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return f"{value:.2e}" if not 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def verdict_line(run: Run, report: Report) -> str:
    """One line that says what happened to the scheme and where, with the threshold that decided."""
    layers = run.layers
    t = report.config.get("thresholds", {})
    drift = (f"post std {number(layers[0].post.std)} → {number(layers[-1].post.std)} "
             f"over {len(layers)} layers")
    if run.verdict == HEALTHY:
        worst_dead = max((layer.post.dead or 0.0) for layer in layers)
        dead = f", up to {percent(worst_dead)} of units dead" if worst_dead else ""
        return f"{run.scheme}: healthy — {drift}{dead}; no flags"
    layer = first_flagged(layers, run.verdict)
    assert layer is not None  # a verdict other than healthy comes from a flagged layer
    count = sum(run.verdict in each.flags for each in layers)
    where = f"from layer {layer.index} ({count} of {len(layers)} layers)"
    reason = _reason(run.verdict, layer, t, report.input.std)
    return f"{run.scheme}: {run.verdict} {where} — {reason}; {drift}"


def _reason(flag: str, layer: LayerStats, t: dict[str, Any], input_std: float | None) -> str:
    if flag == "nonfinite":
        return "NaN or Inf values appear here (overflow or a bad input)"
    if flag == "symmetric":
        return "every unit computes the same value: constant weights never differentiate"
    if flag == "exploding":
        return f"post std {number(layer.post.std)} > {t.get('exploding')} × input std"
    if flag == "vanishing":
        return f"post std {number(layer.post.std)} < {t.get('vanishing')} × input std"
    if flag == "saturated":
        return f"{percent(layer.post.saturated)} of values saturated (> {percent(t.get('saturated'))})"
    return f"{percent(layer.post.dead)} of units dead (> {percent(t.get('dead'))})"


# ----------------------------------------------------------------------------------------------
# Rich


def tables(report: Report) -> list[RenderableType]:
    """One table and one verdict line per scheme, flagged cells coloured."""
    renderables: list[RenderableType] = []
    for run in report.runs:
        renderables += [_table(run), _verdict_text(run, report), Text("")]
    return renderables


def _table(run: Run) -> Table:
    table = Table(title=run.scheme, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="left" if name == "flags" else "right")
    for layer in run.layers:
        cells = {
            "layer": str(layer.index),
            "units": str(layer.fan_out),
            "pre mean": number(layer.pre.mean),
            "pre std": number(layer.pre.std),
            "post mean": number(layer.post.mean),
            "post std": number(layer.post.std),
            "near 0": percent(layer.post.near_zero),
            "dead": percent(layer.post.dead),
            "sat": percent(layer.post.saturated),
        }
        styles = {FLAG_CELLS[f]: FLAG_STYLES[f] for f in reversed(layer.flags) if f in FLAG_CELLS}
        if "nonfinite" in layer.flags:
            styles = dict.fromkeys(cells, FLAG_STYLES["nonfinite"])
        flags = Text(", ").join(Text(f, style=FLAG_STYLES[f]) for f in layer.flags)
        table.add_row(*(Text(cells[c], style=styles.get(c, "")) for c in cells), flags)
    return table


def _verdict_text(run: Run, report: Report) -> Text:
    line = verdict_line(run, report)
    head, _, rest = line.partition(": ")
    text = Text(head + ": ", style="bold")
    text.append(rest.split(" ")[0], style=f"bold {FLAG_STYLES[run.verdict]}")
    text.append(rest[len(rest.split(" ")[0]):])
    return text


def table_text(report: Report, width: int = 120) -> str:
    """The tables as plain text (no colour), as they appear in a file or a pipe."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      highlight=False, legacy_windows=False)
    for renderable in tables(report):
        console.print(renderable, soft_wrap=True)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


# ----------------------------------------------------------------------------------------------
# text formats


def to_json(report: Report) -> str:
    """The documented JSON contract (README, "JSON report"); strict: no NaN, no Infinity."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("scheme", "init", "act", "verdict", "layer", "fan_in", "fan_out",
               "pre_mean", "pre_std", "pre_min", "pre_max", "pre_near_zero",
               "post_mean", "post_std", "post_min", "post_max", "post_near_zero",
               "post_dead", "post_saturated", "flags")


def to_csv(report: Report) -> str:
    """One row per scheme and layer; empty cells for none; flags joined with ';'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in report.runs:
        for layer in run.layers:
            stats = {f"{side}_{k}": v for side in ("pre", "post")
                     for k, v in vars(getattr(layer, side)).items()}
            row = {"scheme": run.scheme, "init": run.init, "act": run.act,
                   "verdict": run.verdict, "layer": layer.index, "fan_in": layer.fan_in,
                   "fan_out": layer.fan_out, **stats, "flags": ";".join(layer.flags)}
            writer.writerow("" if row[c] is None else row[c] for c in CSV_COLUMNS)
    return buffer.getvalue()


def to_markdown(report: Report) -> str:
    """A heading, one pipe table and one verdict line per scheme (GitHub-flavoured Markdown)."""
    lines = [
        "## actstat report",
        "",
        f"{report.input.source}; batch {report.input.batch_size} × {report.input.features}, "
        f"input std {number(report.input.std)}; device {report.device}, torch "
        f"{report.torch_version}, actstat {report.actstat_version}.",
        "",
    ]
    for run in report.runs:
        lines += [f"### {run.scheme}: {run.verdict}", "",
                  "| " + " | ".join(TABLE_COLUMNS) + " |",
                  "|" + "|".join("---:" if c != "flags" else "---" for c in TABLE_COLUMNS) + "|"]
        for layer in run.layers:
            cells = [str(layer.index), str(layer.fan_out), number(layer.pre.mean),
                     number(layer.pre.std), number(layer.post.mean), number(layer.post.std),
                     percent(layer.post.near_zero), percent(layer.post.dead),
                     percent(layer.post.saturated), ", ".join(layer.flags)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Verdict:** {verdict_line(run, report)}", ""]
    return "\n".join(lines)


TEXT_FORMATS: dict[str, Callable[[Report], str]] = {
    "table": table_text,
    "json": to_json,
    "csv": to_csv,
    "markdown": to_markdown,
}
