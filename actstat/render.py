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
from actstat.report import HEALTHY, LayerStats, Report, Run, TrainLayer

FORMATS = ("table", "json", "csv", "markdown")

# one colour per flag, used for the flags column, the flagged number cells and the verdict
FLAG_STYLES = {
    "nonfinite": "bold red",
    "symmetric": "magenta",
    "exploding": "red",
    "vanishing": "yellow",
    "saturated": "bright_magenta",
    "grad_exploding": "red",
    "grad_vanishing": "yellow",
    "grad_zero": "magenta",
    "dead": "red",
    HEALTHY: "green",
}
# which number cell a flag colours
FLAG_CELLS = {"exploding": "post std", "vanishing": "post std", "dead": "dead",
              "saturated": "sat", "symmetric": "pre std", "grad_exploding": "grad std",
              "grad_vanishing": "grad std", "grad_zero": "grad:data"}


def number(value: float | None) -> str:
    """4 significant digits, scientific outside [1e-3, 1e4); `—` for none (not finite / n.a.)."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return f"{value:.2e}" if not 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


Cell = Callable[[LayerStats, TrainLayer | None], str]
FORWARD_COLUMNS: list[tuple[str, Cell]] = [
    ("layer", lambda layer, _: str(layer.index)),
    ("units", lambda layer, _: str(layer.fan_out)),
    ("pre mean", lambda layer, _: number(layer.pre.mean)),
    ("pre std", lambda layer, _: number(layer.pre.std)),
    ("post mean", lambda layer, _: number(layer.post.mean)),
    ("post std", lambda layer, _: number(layer.post.std)),
    ("near 0", lambda layer, _: percent(layer.post.near_zero)),
    ("dead", lambda layer, _: percent(layer.post.dead)),
    ("sat", lambda layer, _: percent(layer.post.saturated)),
]
GRAD_COLUMNS: list[tuple[str, Cell]] = [
    ("grad std", lambda layer, _: number(layer.grad.std if layer.grad else None)),
    ("grad:data", lambda layer, _: number(layer.grad.grad_to_data if layer.grad else None)),
]
TRAIN_COLUMNS: list[tuple[str, Cell]] = [
    ("ΔW", lambda _, moved: "—" if moved is None else _weight_change(moved)),
    ("still sym", lambda _, moved: "—" if moved is None else
     ("yes" if moved.still_symmetric else "no")),
]


def columns(run: Run) -> list[tuple[str, Cell]]:
    """The number columns of a scheme's table: gradient and training ones only when measured."""
    chosen = list(FORWARD_COLUMNS)
    if any(layer.grad is not None for layer in run.layers):
        chosen += GRAD_COLUMNS
    if run.train is not None:
        chosen += TRAIN_COLUMNS
    return chosen


def _weight_change(moved: TrainLayer) -> str:
    if moved.weight_change is not None:
        return percent(moved.weight_change)
    return "0" if moved.weight_delta == 0 else number(moved.weight_delta)


def _trained(run: Run) -> list[TrainLayer | None]:
    return list(run.train.layers) if run.train is not None else [None] * len(run.layers)


def verdict_line(run: Run, report: Report) -> str:
    """One line that says what happened to the scheme and where, with the threshold that decided."""
    layers = run.layers
    t = report.config.get("thresholds", {})
    drift = (f"post std {number(layers[0].post.std)} → {number(layers[-1].post.std)} "
             f"over {len(layers)} layers")
    ratio = gradient_ratio(run)
    grad = "" if ratio is None else f"; grad std layer 1 / layer {len(layers)} = {number(ratio)}"
    if run.verdict == HEALTHY:
        worst_dead = max((layer.post.dead or 0.0) for layer in layers)
        dead = f", up to {percent(worst_dead)} of units dead" if worst_dead else ""
        return f"{run.scheme}: healthy — {drift}{dead}{grad}; no flags"
    layer = first_flagged(layers, run.verdict)
    assert layer is not None  # a verdict other than healthy comes from a flagged layer
    count = sum(run.verdict in each.flags for each in layers)
    where = f"from layer {layer.index} ({count} of {len(layers)} layers)"
    reason = _reason(run.verdict, layer, t, run)
    return f"{run.scheme}: {run.verdict} {where} — {reason}; {drift}{grad}"


def gradient_ratio(run: Run) -> float | None:
    """std of dL/d(pre) at layer 1 over the last hidden layer's; None without gradients."""
    first, last = run.layers[0].grad, run.layers[-1].grad
    if first is None or last is None or first.std is None or not last.std:
        return None
    return first.std / last.std


def train_line(run: Run) -> str | None:
    """What the training probe saw, in one line; None without one."""
    train = run.train
    if train is None:
        return None
    depth = len(train.layers)
    frozen = sum(layer.weight_delta == 0 for layer in train.layers)
    same = sum(layer.still_symmetric for layer in train.layers)
    moved = "hidden weights never moved" if frozen == depth else (
        f"hidden weights moved (never in {frozen} of {depth} layers)" if frozen else
        "hidden weights moved")
    return (f"training: {train.steps} SGD steps at lr {train.lr:g}: loss "
            f"{number(train.loss[0])} → {number(train.loss[-1])}; {moved}; units still identical "
            f"in {same} of {depth} layers")


def _reason(flag: str, layer: LayerStats, t: dict[str, Any], run: Run) -> str:
    if flag == "nonfinite":
        return "NaN or Inf values appear here (overflow or a bad input)"
    if flag == "symmetric":
        frozen = any("grad_zero" in each.flags for each in run.layers)
        return ("every unit computes the same value: constant weights never differentiate"
                + ("; weight gradients are exactly zero, so they cannot learn" if frozen else ""))
    if flag in ("grad_exploding", "grad_vanishing"):
        side = ">" if flag == "grad_exploding" else "<"
        last = run.layers[-1].grad
        relative = (layer.grad.std / last.std if layer.grad and layer.grad.std is not None
                    and last and last.std else None)
        return (f"grad std {number(layer.grad.std if layer.grad else None)} is "
                f"{number(relative)} × the last hidden layer's ({side} {t.get(flag)})")
    if flag == "grad_zero":
        return "weight gradients are exactly zero: these weights cannot learn"
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
        renderables += [_table(run), _verdict_text(run, report)]
        line = train_line(run)
        if line:
            renderables.append(Text(line))
        renderables.append(Text(""))
    return renderables


def _table(run: Run) -> Table:
    table = Table(title=run.scheme, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    chosen = columns(run)
    for name, _ in chosen:
        table.add_column(name, justify="right")
    table.add_column("flags", justify="left")
    for layer, moved in zip(run.layers, _trained(run)):
        styles = {FLAG_CELLS[f]: FLAG_STYLES[f] for f in reversed(layer.flags) if f in FLAG_CELLS}
        if "nonfinite" in layer.flags:
            styles = {name: FLAG_STYLES["nonfinite"] for name, _ in chosen}
        flags = Text(", ").join(Text(f, style=FLAG_STYLES[f]) for f in layer.flags)
        table.add_row(*(Text(cell(layer, moved), style=styles.get(name, ""))
                        for name, cell in chosen), flags)
    return table


def _verdict_text(run: Run, report: Report) -> Text:
    line = verdict_line(run, report)
    head, _, rest = line.partition(": ")
    text = Text(head + ": ", style="bold")
    text.append(rest.split(" ")[0], style=f"bold {FLAG_STYLES[run.verdict]}")
    text.append(rest[len(rest.split(" ")[0]):])
    return text


def table_text(report: Report, width: int = 1000) -> str:
    """The tables as plain text (no colour), as they appear in a file or a pipe: at their natural
    width (a terminal squeezes them to fit; a file need not)."""
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
               "post_dead", "post_saturated", "grad_mean", "grad_std", "grad_weight_std",
               "grad_to_data", "train_weight_change", "train_weight_delta", "train_bias_delta",
               "train_still_symmetric", "flags")


def to_csv(report: Report) -> str:
    """One row per scheme and layer; empty cells for none; flags joined with ';'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in report.runs:
        for layer, moved in zip(run.layers, _trained(run)):
            stats = {f"{side}_{k}": v for side in ("pre", "post")
                     for k, v in vars(getattr(layer, side)).items()}
            if layer.grad is not None:
                stats |= {"grad_mean": layer.grad.mean, "grad_std": layer.grad.std,
                          "grad_weight_std": layer.grad.weight_std,
                          "grad_to_data": layer.grad.grad_to_data}
            if moved is not None:
                stats |= {f"train_{k}": v for k, v in vars(moved).items() if k != "index"}
            row = {"scheme": run.scheme, "init": run.init, "act": run.act,
                   "verdict": run.verdict, "layer": layer.index, "fan_in": layer.fan_in,
                   "fan_out": layer.fan_out, **stats, "flags": ";".join(layer.flags)}
            writer.writerow("" if row.get(c) is None else row[c] for c in CSV_COLUMNS)
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
        chosen = columns(run)
        names = [name for name, _ in chosen] + ["flags"]
        lines += [f"### {run.scheme}: {run.verdict}", "",
                  "| " + " | ".join(names) + " |",
                  "|" + "|".join("---:" for _ in chosen) + "|---|"]
        for layer, moved in zip(run.layers, _trained(run)):
            cells = [cell(layer, moved) for _, cell in chosen] + [", ".join(layer.flags)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Verdict:** {verdict_line(run, report)}", ""]
        if run.train is not None:
            lines += [f"**Training:** {train_line(run)}", ""]
    return "\n".join(lines)


TEXT_FORMATS: dict[str, Callable[[Report], str]] = {
    "table": table_text,
    "json": to_json,
    "csv": to_csv,
    "markdown": to_markdown,
}
