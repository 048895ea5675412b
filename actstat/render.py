"""Render: a Report -> Rich tables, JSON, CSV or Markdown text. Nothing here prints."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console, RenderableType
from rich.text import Text

from actstat.analysis import (
    Summary,
    first_flagged,
    grad_reference,
    head_row,
    signal_rows,
    summarise,
)
from actstat.check import BoundBreach, CheckResult, Drift, StepsChange, is_ratio
from actstat.layout import Column, Fitted, fit, left_out_note
from actstat.records import (
    FLAGS,
    HEALTHY,
    LayerStats,
    LsuvLayer,
    Report,
    Run,
    TrainLayer,
    finite_or_none,
)

FORMATS = ("table", "json", "csv", "markdown")
SORTS = ("verdict", "gain", "name")
SPARK = "▁▂▃▄▅▆▇█"

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


# A mean within this many roundings of its tensor's spread is float noise around zero. A
# normalisation's output mean is analytically 0 and measures at 0.002 to 0.16 roundings (float32:
# LayerNorm 2e-09, BatchNorm 2e-08 at std 1; bfloat16 and float16 less), and its digits change with
# the thread count and the CPU's kernels. Subtracting a mean itself rounded leaves up to about
# ε × |input mean| / input std, hence room for an input mean a few times its spread. Any mean the
# batch can measure sits far above: its sampling error, std / √values, is 1e-4 × std at 1e8 values.
NOISE_ROUNDINGS = 4
# machine epsilon, the rounding of a value relative to its size, of each dtype a network runs in
EPSILON = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
NOISE = "≈0"  # written `~0` where the terminal cannot encode `≈` (actstat/symbols.py)


def mean_text(mean: float | None, std: float | None, dtype: str | None = "float32") -> str:
    """A mean as the tables print it: `≈0` when it is float noise around zero, |mean| <=
    NOISE_ROUNDINGS × ε × std with ε the machine epsilon of the dtype the network ran in (float32:
    |mean| <= 4.8e-07 × std), exact zero included; else as `number`. A constant tensor (std 0)
    keeps its mean. Only the printed cell changes: JSON and CSV keep the measured number."""
    if (mean is not None and std is not None and 0 < std < math.inf
            and abs(mean) <= NOISE_ROUNDINGS * EPSILON.get(dtype or "", EPSILON["float32"]) * std):
        return NOISE
    return number(mean)


Cell = Callable[[LayerStats, TrainLayer | None], str]


def forward_columns(dtype: str | None) -> list[tuple[str, Cell]]:
    """The columns every layer table has; `dtype`, the network's, tells noise means (mean_text)."""
    return [
        ("layer", lambda layer, _: str(layer.index)),
        ("units", lambda layer, _: str(layer.fan_out)),
        ("pre mean", lambda layer, _: mean_text(layer.pre.mean, layer.pre.std, dtype)
         if layer.pre else "—"),
        ("pre std", lambda layer, _: number(layer.pre.std if layer.pre else None)),
        ("post mean", lambda layer, _: mean_text(layer.post.mean, layer.post.std, dtype)),
        ("post std", lambda layer, _: number(layer.post.std)),
        ("near 0", lambda layer, _: percent(layer.post.near_zero)),
        ("dead", lambda layer, _: percent(layer.post.dead)),
        ("sat", lambda layer, _: percent(layer.post.saturated)),
    ]
GRAD_COLUMNS: list[tuple[str, Cell]] = [
    ("grad std", lambda layer, _: number(layer.grad.std if layer.grad else None)),
    ("grad:data", lambda layer, _: number(layer.grad.grad_to_data if layer.grad else None)),
]
THEORY_COLUMNS: list[tuple[str, Cell]] = [
    ("exp std", lambda layer, _: number(layer.post.expected_std)),
    ("meas/exp", lambda layer, _: number(layer.post.std / layer.post.expected_std)
     if layer.post.std is not None and layer.post.expected_std else "—"),
]
TRAIN_COLUMNS: list[tuple[str, Cell]] = [
    ("ΔW", lambda _, moved: "—" if moved is None else _weight_change(moved)),
    ("still sym", lambda _, moved: "—" if moved is None else
     ("yes" if moved.still_symmetric else "no")),
]


# a user's model: its rows are named by module path and say which modules they measured
MODEL_COLUMNS: list[tuple[str, Cell]] = [
    ("layer", lambda layer, _: layer.name),
    ("module", lambda layer, _: layer.module),
]
TEXT_CELLS = ("layer", "module")


def layer_label(layer: LayerStats, run: Run) -> str:
    """How text names a row: the MLP's layer number (its `head`), or a user model's module
    path."""
    if run.model is not None:
        return layer.name
    return "head" if layer is head_row(run.layers) else str(layer.index)


def columns(run: Run, dtype: str | None = "float32") -> list[tuple[str, Cell]]:
    """The number columns of a scheme's table: gradient and training ones only when measured;
    `dtype`: the network's (the report's config), which tells noise means."""
    chosen = forward_columns(dtype)
    if run.model is not None:
        chosen = MODEL_COLUMNS + chosen[1:]
    else:
        chosen[0] = ("layer", lambda layer, _: layer_label(layer, run))
    if has_expected(run):
        chosen += THEORY_COLUMNS
    if any(layer.grad is not None for layer in run.layers):
        chosen += GRAD_COLUMNS
    if run.train is not None:
        chosen += TRAIN_COLUMNS
    return chosen


def has_expected(run: Run) -> bool:
    """Whether the scheme's rows carry mean-field expectations: the MLP's (with its phase) and
    the built-in residual and normed models' (no phase); a user's model has none."""
    return run.theory is not None or any(layer.post.expected_std is not None
                                         for layer in run.layers)


def _weight_change(moved: TrainLayer) -> str:
    if moved.weight_change is not None:
        return percent(moved.weight_change)
    return "0" if moved.weight_delta == 0 else number(moved.weight_delta)


def _trained(run: Run) -> list[TrainLayer | None]:
    """Each layer row's training record: the MLP's by position; a model's by module name (its
    rows include norms and blocks, which have no record of their own)."""
    if run.train is None:
        return [None] * len(run.layers)
    if run.model is None:
        return list(run.train.layers)
    by_name = {moved.name: moved for moved in run.train.layers}
    return [by_name.get(layer.name) if layer.kind == "weight" else None for layer in run.layers]


def verdict_line(run: Run, report: Report) -> str:
    """One line that says what happened to the scheme and where, with the threshold that decided."""
    layers = run.layers
    t = report.config.get("thresholds", {})
    signal = signal_rows(layers)
    drift = (f"post std {number(signal[0].post.std)} → {number(signal[-1].post.std)} "
             f"over {len(signal)} layers")
    ratio = gradient_ratio(run)
    first, last = layer_label(layers[0], run), layer_label(grad_reference(layers), run)
    grad = "" if ratio is None else f"; grad std layer {first} / layer {last} = {number(ratio)}"
    if run.theory is not None:
        grad += f"; mean field: {run.theory.phase} (χ₁ = {number(run.theory.chi1)})"
    notes = "".join(f"; {note}" for note in run.notes)
    if run.verdict == HEALTHY:
        worst_dead = summarise(layers, run.verdict).worst_dead
        dead = f", up to {percent(worst_dead)} of units dead" if worst_dead else ""
        return f"{run.scheme}: healthy — {drift}{dead}{grad}; no flags{notes}"
    layer = first_flagged(layers, run.verdict)
    assert layer is not None  # a verdict other than healthy comes from a flagged layer
    count = sum(run.verdict in each.flags for each in layers)
    where = f"from layer {layer_label(layer, run)} ({count} of {len(layers)} layers)"
    reason = _reason(run.verdict, layer, t, run)
    return f"{run.scheme}: {run.verdict} {where} — {reason}; {drift}{grad}{notes}"


def precision_note(report: Report) -> str | None:
    """Half-precision runs say that their statistics were accumulated in float32."""
    dtype = report.config.get("dtype")
    if dtype in ("float16", "bfloat16"):
        return (f"note: the network ran in {dtype}; its statistics were reduced in float32 "
                "(thresholds compared in float32 too)")
    return None


def gradient_ratio(run: Run) -> float | None:
    """std of dL/d(pre) at layer 1 over the last hidden layer's; None without gradients."""
    return summarise(run.layers, run.verdict).grad_ratio


def train_line(run: Run) -> str | None:
    """What the training probe saw, in one line; None without one."""
    train = run.train
    if train is None:
        return None
    depth = len(train.layers)
    frozen = sum(layer.weight_delta == 0 for layer in train.layers)
    same = sum(layer.still_symmetric for layer in train.layers)
    # the MLP's layers are its hidden Linears; a model's, every Linear before its head
    weights = "hidden weights" if run.model is None else "weights"
    moved = f"{weights} never moved" if frozen == depth else (
        f"{weights} moved (never in {frozen} of {depth} layers)" if frozen else
        f"{weights} moved")
    alphas = ""
    if train.multipliers:
        ends = [alpha.end for alpha in train.multipliers if alpha.end is not None]
        starts = sorted({number(alpha.start) for alpha in train.multipliers})
        span = "—" if not ends else (number(ends[0]) if min(ends) == max(ends)
                                     else f"{number(min(ends))} to {number(max(ends))}")
        alphas = f"; α {'/'.join(starts)} → {span} ({len(train.multipliers)} blocks)"
    return (f"training: {train.steps} SGD steps at lr {train.lr:g}: loss "
            f"{number(train.loss[0])} → {number(train.loss[-1])}; {moved}; units still identical "
            f"in {same} of {depth} layers{alphas}")


# a warning names at most this many layers that lsuv left outside its tolerance (the JSON
# report's runs[].lsuv has every one)
LSUV_NAMED = 6


def lsuv_label(layer: LsuvLayer, run: Run) -> str:
    """How text names a layer lsuv scaled: as the table does (the MLP's layer number, its
    `head`; a user's or the residual model's module path)."""
    if run.model is None and layer.name.isdigit():
        k = int(layer.name) // 2 + 1
        return f"layer {k}" if k <= len(signal_rows(run.layers)) else "head"
    return layer.name


def lsuv_line(run: Run) -> str | None:
    """What lsuv did, in one line: the std it reached and the updates it took, or which layers
    it left outside its tolerance (with their std, and their mean where that is what missed);
    None for any other init."""
    if not run.lsuv:
        return None
    tolerance = run.init_params.get("tolerance")
    within = f" (tolerance {tolerance:g})" if isinstance(tolerance, (int, float)) else ""
    updates = sorted({layer.iterations for layer in run.lsuv})
    spread = (f"{updates[0]}" if len(updates) == 1 else f"{updates[0]}–{updates[-1]}")
    missed = [layer for layer in run.lsuv if not layer.converged]
    count = len(run.lsuv)
    if not missed:
        stds = [layer.std for layer in run.lsuv]
        reached = (f"std {number(stds[0])}" if number(min(stds)) == number(max(stds))
                   else f"std {number(min(stds))}–{number(max(stds))}")
        return (f"lsuv: {count} weight layers scaled to {reached}{within} in {spread} "
                f"update{'s' if updates[-1] != 1 else ''} each")
    named = ", ".join(
        f"{lsuv_label(layer, run)} (std {number(layer.std)}"
        + (f", mean {number(layer.mean)})" if abs(layer.std - 1) < (tolerance or 0) else ")")
        for layer in missed[:LSUV_NAMED])
    more = f" and {len(missed) - LSUV_NAMED} more" if len(missed) > LSUV_NAMED else ""
    limit = run.init_params.get("max_iterations")
    return (f"lsuv: {len(missed)} of {count} weight layers not within {tolerance:g} of std 1 "
            f"and mean 0 after {limit} update{'s' if limit != 1 else ''}: {named}{more}; "
            "measured as they are")


def lsuv_warnings(report: Report) -> list[str]:
    """One line per scheme whose lsuv left layers outside its tolerance."""
    return [_scheme_lsuv_line(run) for run in report.runs
            if run.lsuv and not all(layer.converged for layer in run.lsuv)]


def _lsuv_summary(run: Run) -> str:
    """`lsuv_line` without its `lsuv: ` (where a heading or the scheme's name says it)."""
    return (lsuv_line(run) or "").removeprefix("lsuv: ")


def _scheme_lsuv_line(run: Run) -> str:
    return f"{run.scheme}: {_lsuv_summary(run)}"


def _reason(flag: str, layer: LayerStats, t: dict[str, Any], run: Run) -> str:
    if flag == "nonfinite":
        return "NaN or Inf values appear here (overflow or a bad input)"
    if flag == "symmetric":
        frozen = any("grad_zero" in each.flags for each in run.layers)
        return ("every unit computes the same value: constant weights never differentiate"
                + ("; weight gradients are exactly zero, so they cannot learn" if frozen else ""))
    if flag in ("grad_exploding", "grad_vanishing"):
        side = ">" if flag == "grad_exploding" else "<"
        reference_row = grad_reference(run.layers)
        last = reference_row.grad
        relative = (layer.grad.std / last.std if layer.grad and layer.grad.std is not None
                    and last and last.std else None)
        reference = ("the last hidden layer's" if run.model is None
                     else f"layer {reference_row.name}'s")
        return (f"grad std {number(layer.grad.std if layer.grad else None)} is "
                f"{number(relative)} × {reference} ({side} {t.get(flag)})")
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


def tables(report: Report, width: int | None = None) -> list[RenderableType]:
    """One table and one verdict line per scheme, flagged cells coloured; each table fitted to
    `width` terminal cells (None: full width), with a note when columns left."""
    renderables: list[RenderableType] = []
    note = precision_note(report)
    if note:
        renderables.append(Text(note, style="dim"))
    for run in report.runs:
        fitted = _table(run, width, report.config.get("dtype"))
        renderables.append(fitted.table)
        left = left_out_note(fitted.left_out, width)
        if left:
            renderables.append(left)
        renderables.append(_verdict_text(run, report))
        for line in (train_line(run), lsuv_line(run)):
            if line:
                renderables.append(Text(line))
        hist = histogram_block(run, width)
        if hist:
            renderables += [Text(""), *hist]
        renderables.append(Text(""))
    return renderables


# The order in which a scheme's per-layer columns leave a narrow terminal: the first named here
# leave first. The layer, its post std and its flags always stay. A user's model names its rows
# by module path (`0`, `1`, `4:input`): without the module column they say nothing, so it stays
# until only the std columns are left.
LAYER_COLUMNS_LEAVING = ("units", "still sym", "grad:data", "near 0", "exp std", "pre mean",
                         "meas/exp", "sat", "dead", "pre std", "module", "ΔW", "grad std",
                         "post mean")


def _rank(name: str, leaving: tuple[str, ...]) -> int:
    return len(leaving) - leaving.index(name) if name in leaving else 0


def _table(run: Run, width: int | None = None, dtype: str | None = "float32") -> Fitted:
    chosen = columns(run, dtype)
    rows: list[dict[str, Text]] = []
    for layer, moved in zip(run.layers, _trained(run)):
        styles = {FLAG_CELLS[f]: FLAG_STYLES[f] for f in reversed(layer.flags) if f in FLAG_CELLS}
        if "nonfinite" in layer.flags:
            styles = {name: FLAG_STYLES["nonfinite"] for name, _ in chosen}
        row = {name: Text(cell(layer, moved), style=styles.get(name, "")) for name, cell in chosen}
        row["flags"] = Text(", ").join(Text(f, style=FLAG_STYLES[f]) for f in layer.flags)
        rows.append(row)
    names = [name for name, _ in chosen] + ["flags"]
    spec = [Column(name, [row[name] for row in rows], rank=_rank(name, LAYER_COLUMNS_LEAVING),
                   justify="left" if name in TEXT_CELLS and run.model is not None else "right")
            for name in names[:-1]]
    spec.append(Column("flags", [row["flags"] for row in rows], justify="left", wrap=True,
                       min_width=max(len(f) for f in FLAGS)))
    return fit(spec, width, title=run.scheme)


def _verdict_text(run: Run, report: Report) -> Text:
    line = verdict_line(run, report)
    head, _, rest = line.partition(": ")
    text = Text(head + ": ", style="bold")
    text.append(rest.split(" ")[0], style=f"bold {FLAG_STYLES[run.verdict]}")
    text.append(rest[len(rest.split(" ")[0]):])
    return text


def table_text(report: Report) -> str:
    """The tables as plain text (no colour), as they appear in a file or a pipe: at their natural
    width (a terminal fits them to its width; a file need not)."""
    return _plain(tables(report), 1000)


def _plain(renderables: list[RenderableType], width: int) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      highlight=False, legacy_windows=False)
    for renderable in renderables:
        console.print(renderable, soft_wrap=True)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


# ----------------------------------------------------------------------------------------------
# text formats


def to_json(report: Report) -> str:
    """The documented JSON contract (docs/json-schema.md); strict: no NaN, no Infinity."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("scheme", "init", "act", "verdict", "layer", "fan_in", "fan_out",
               "pre_mean", "pre_std", "pre_min", "pre_max", "pre_near_zero",
               "post_mean", "post_std", "post_min", "post_max", "post_near_zero",
               "post_dead", "post_saturated", "pre_expected_std", "post_expected_mean",
               "post_expected_std", "grad_mean", "grad_std", "grad_weight_std",
               "grad_to_data", "train_weight_change", "train_weight_delta", "train_bias_delta",
               "train_still_symmetric", "flags", "name", "kind", "module", "by_design")


def to_csv(report: Report) -> str:
    """One row per scheme and layer; empty cells for none; flags (and by_design) joined with
    ';'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in report.runs:
        for layer, moved in zip(run.layers, _trained(run)):
            stats = {f"{side}_{k}": v for side in ("pre", "post") if getattr(layer, side)
                     for k, v in vars(getattr(layer, side)).items()}
            if layer.grad is not None:
                stats |= {"grad_mean": layer.grad.mean, "grad_std": layer.grad.std,
                          "grad_weight_std": layer.grad.weight_std,
                          "grad_to_data": layer.grad.grad_to_data}
            if moved is not None:
                stats |= {f"train_{k}": v for k, v in vars(moved).items() if k != "index"}
            row = {"scheme": run.scheme, "init": run.init, "act": run.act,
                   "verdict": run.verdict, "layer": layer.index, "fan_in": layer.fan_in,
                   "fan_out": layer.fan_out, **stats, "flags": ";".join(layer.flags),
                   "name": layer.name, "kind": layer.kind, "module": layer.module,
                   "by_design": ";".join(layer.by_design)}
            writer.writerow("" if row.get(c) is None else row[c] for c in CSV_COLUMNS)
    return buffer.getvalue()


def _input_line(report: Report) -> str:
    return (f"{report.input.source}; batch {report.input.batch_size} × {report.input.features}, "
            f"input std {number(report.input.std)}; device {report.device}, torch "
            f"{report.torch_version}, actstat {report.actstat_version}.")


def to_markdown(report: Report) -> str:
    """A heading, one pipe table and one verdict line per scheme (GitHub-flavoured Markdown)."""
    lines = ["## actstat report", "", _input_line(report), ""]
    if precision_note(report):
        lines += [f"_{precision_note(report)}_", ""]
    for run in report.runs:
        chosen = columns(run, report.config.get("dtype"))
        names = [name for name, _ in chosen] + ["flags"]
        lines += [f"### {run.scheme}: {run.verdict}", "",
                  "| " + " | ".join(names) + " |",
                  "|" + "|".join("---" if name in TEXT_CELLS and run.model is not None
                                 else "---:" for name, _ in chosen) + "|---|"]
        for layer, moved in zip(run.layers, _trained(run)):
            cells = [cell(layer, moved) for _, cell in chosen] + [", ".join(layer.flags)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Verdict:** {verdict_line(run, report)}", ""]
        if run.train is not None:
            lines += [f"**Training:** {train_line(run)}", ""]
        if run.lsuv:
            lines += [f"**LSUV:** {_lsuv_summary(run)}", ""]
    return "\n".join(lines)


# the flag colours on a white notebook page (terminal yellow is unreadable there)
CSS_COLOURS = {"red": "#c62828", "yellow": "#b26a00", "magenta": "#8e24aa",
               "bright_magenta": "#d81b60", "green": "#2e7d32"}


def to_html(report: Report) -> str:
    """One HTML table and verdict line per scheme (Jupyter's rich display); flagged cells in the
    terminal's colours."""
    parts = [f"<p>{html.escape(_input_line(report))}</p>"]
    if precision_note(report):
        parts.append(f"<p><em>{html.escape(precision_note(report) or '')}</em></p>")
    for run in report.runs:
        chosen = columns(run, report.config.get("dtype"))
        head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in chosen) + "<th>flags</th>"
        rows = []
        for layer, moved in zip(run.layers, _trained(run)):
            colours = {FLAG_CELLS[f]: CSS_COLOURS[FLAG_STYLES[f].split()[-1]]
                       for f in reversed(layer.flags) if f in FLAG_CELLS}
            cells = "".join(
                f"<td style=\"text-align:{'left' if name in TEXT_CELLS else 'right'}"
                + (f";color:{colours[name]}" if name in colours else "") + "\">"
                + html.escape(cell(layer, moved)) + "</td>" for name, cell in chosen)
            rows.append(f"<tr>{cells}<td>{html.escape(', '.join(layer.flags))}</td></tr>")
        parts += [f"<h4>{html.escape(run.scheme)}: {html.escape(run.verdict)}</h4>",
                  f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
                  f"<p><b>Verdict:</b> {html.escape(verdict_line(run, report))}</p>"]
        if run.lsuv:
            parts.append(f"<p><b>LSUV:</b> {html.escape(_lsuv_summary(run))}</p>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# compare: one row per scheme


def quantise(values: list[float | None], levels: int, lo: float, hi: float) -> list[int | None]:
    """Each value's level 0..levels-1 on [lo, hi] (a flat range: the middle level; None: none).
    Sparklines and histogram rows are both drawn from this."""
    if hi - lo < 1e-12:
        return [None if v is None else (levels - 1) // 2 for v in values]
    return [None if v is None else round((v - lo) / (hi - lo) * (levels - 1)) for v in values]


def sparkline(values: list[float | None], width: int = 40) -> str:
    """log10 of each value as one of eight bar heights, scaled to the row's own range; a value
    that is 0, missing or not finite is a space. A constant row is a flat middle bar. More than
    `width` values are sampled at evenly spaced layers (the first and the last always)."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    logs = [math.log10(v) if v is not None and v > 0 and math.isfinite(v) else None
            for v in values]
    present = [v for v in logs if v is not None]
    if not present:
        return " " * len(values)
    levels = quantise(logs, len(SPARK), min(present), max(present))
    return "".join(" " if level is None else SPARK[level] for level in levels)


SHADES = " ░▒▓█"


def histogram_row(counts: tuple[int, ...]) -> str:
    """One shaded cell per bin: blank when empty, then four shades by log(1 + count) relative
    to the row's largest bin, so a thin tail stays visible next to a spike."""
    logs = [math.log1p(c) if c > 0 else None for c in counts]
    top = max((v for v in logs if v is not None), default=0.0)
    levels = quantise(logs, len(SHADES) - 1, 0.0, top)
    return "".join(" " if level is None else SHADES[max(level, 0) + 1] for level in levels)


def merge_bins(counts: tuple[int, ...], cells: int) -> tuple[int, ...]:
    """Adjacent bins summed pairwise until at most `cells` remain (a narrow terminal): each
    merged bin still covers an equal share of [min, max] where the count halves evenly."""
    while len(counts) > max(cells, 1):
        counts = tuple(sum(counts[i:i + 2]) for i in range(0, len(counts), 2))
    return counts


def histogram_block(run: Run, width: int | None = None) -> list[Text]:
    """The post-activation distribution of every layer, one row each: a heat map over depth.
    Each row spans its own layer's [min, max], printed beside it; in a terminal narrower than a
    row, adjacent bins merge (40 -> 20 -> 10 cells) so that the range is still printed whole."""
    if all(layer.post.histogram is None for layer in run.layers):
        return []
    spans = {layer.index: f"[{number(layer.post.min)}, {number(layer.post.max)}]"
             for layer in run.layers}
    labels = {layer.index: layer_label(layer, run) for layer in run.layers}
    label_width = max(5, *(len(text) for text in labels.values()))
    cells = None if width is None else width - 4 - label_width - max(map(len, spans.values()))
    lines = [Text(f"post-activation histograms ({run.scheme}; each row over its layer's "
                  "[min, max]; darker: more values, log scale)", style="bold")]
    for layer in run.layers:
        counts = layer.post.histogram
        if counts is not None and cells is not None:
            counts = merge_bins(counts, cells)
        row = "—" if counts is None else histogram_row(counts)
        lines.append(Text(f"{labels[layer.index]:>{label_width}} │{row}│ {spans[layer.index]}"))
    return lines


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
# grad 1/L remain; the sparklines shrink (fewer layers sampled) before any number leaves.
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
               rank=_rank(name, COMPARE_COLUMNS_LEAVING), wrap=name in ("scheme", "first flag"),
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
    lsuv = [Text(_scheme_lsuv_line(run)) for run in sorted_runs(report, sort) if run.lsuv]
    return [fitted.table] + ([note] if note else []) + lsuv + [
        Text(line, style="dim") for line in compare_notes(report, sort)]


def compare_notes(report: Report, sort: str = "verdict") -> list[str]:
    """Under the compare table, what each scheme's deliberate zeros did (a verdict says nothing
    of them): `fixup + tanh: zero by design (fixup): ...`."""
    return [f"{run.scheme}: {'; '.join(run.notes)}" for run in sorted_runs(report, sort)
            if run.notes]


def compare_text(report: Report, sort: str = "verdict") -> str:
    return _plain(compare_renderables(report, sort), 1000)


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
    lines = ["## actstat compare", "", _input_line(report), "",
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


# ----------------------------------------------------------------------------------------------
# check: what drifted, for a terminal, a CI summary page, a machine, and a JUnit reader


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
    if along:
        first = min(along, key=lambda d: d.step or 0)  # the earliest step; ties: scheme order
        lines.append(f"{len(along)} of {result.trajectory_compared} values through training "
                     f"drifted; first at step {first.step} ({first.scheme}, {_point(first)})")
    elif result.trajectory_compared:
        lines.append(f"all {result.trajectory_compared} values through training within "
                     f"tolerance ({', '.join(result.trajectory_metrics)})")
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
                       rank=_rank(name, DRIFT_COLUMNS_LEAVING), wrap=name in ("scheme", "metric"),
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
    return _plain(check_renderables(result), 1000)


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


TEXT_FORMATS: dict[str, Callable[[Report], str]] = {
    "table": table_text,
    "json": to_json,
    "csv": to_csv,
    "markdown": to_markdown,
}
