"""Render: a Report -> Rich tables, JSON, CSV or Markdown text. Nothing here prints."""

from __future__ import annotations

import csv
import html
import io
import math
import statistics
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.text import Text

from actstat.analysis import (
    first_flagged,
    grad_reference,
    head_row,
    signal_rows,
    summarise,
    trend_rows,
)
from actstat.layout import Column, Fitted, fit, left_out_note, wrap_message
from actstat.records import (
    FLAGS,
    HEALTHY,
    LayerStats,
    LsuvLayer,
    Report,
    Run,
    TrainLayer,
)

FORMATS = ("table", "json", "csv", "markdown")
SORTS = ("verdict", "gain", "name")
SPARK = "▁▂▃▄▅▆▇█"

# one colour per flag, used for the flags column, the flagged number cells and the verdict
FLAG_STYLES = {
    "nonfinite": "bold red",
    "symmetric": "magenta",
    "large_branch": "red",
    "exploding": "red",
    "vanishing": "yellow",
    "entropy_collapse": "yellow",
    "logit_growth": "red",
    "saturated": "bright_magenta",
    "grad_exploding": "red",
    "grad_vanishing": "yellow",
    "grad_zero": "magenta",
    "dead": "red",
    HEALTHY: "green",
}
# which number cell a flag colours
FLAG_CELLS = {"exploding": "post std", "vanishing": "post std", "dead": "dead",
              "large_branch": "branch", "entropy_collapse": "attn H",
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
    if any(layer.branch_ratio is not None for layer in run.layers):
        # a residual branch's rms over its stream's (large_branch)
        chosen += [("branch", lambda layer, _: "" if layer.branch_ratio is None
                    else number(layer.branch_ratio))]
    if any(layer.attention_entropy for layer in run.layers):
        # the lowest head's attention entropy (entropy_collapse; every head's: the JSON)
        chosen += [("attn H", lambda layer, _: "" if not layer.attention_entropy
                    else number(min((e for e in layer.attention_entropy if e is not None),
                                    default=None)))]
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
    trend = trend_rows(layers)
    if trend[0].stream is None:
        drift = (f"post std {number(signal[0].post.std)} → {number(signal[-1].post.std)} "
                 f"over {len(signal)} layers")
        first, last = layer_label(layers[0], run), layer_label(grad_reference(layers), run)
    else:  # a residual network: its stream, from its start to its last block
        blocks = sum(layer.stream == "block" for layer in trend)
        drift = (f"stream std {number(trend[0].post.std)} → {number(trend[-1].post.std)} "
                 f"over {blocks} blocks")
        first, last = layer_label(trend[0], run), layer_label(trend[-1], run)
    ratio = gradient_ratio(run)
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
    return [scheme_lsuv_line(run) for run in report.runs
            if run.lsuv and not all(layer.converged for layer in run.lsuv)]


def _lsuv_summary(run: Run) -> str:
    """`lsuv_line` without its `lsuv: ` (where a heading or the scheme's name says it)."""
    return (lsuv_line(run) or "").removeprefix("lsuv: ")


def scheme_lsuv_line(run: Run) -> str:
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
        named = {each.name: each for each in run.layers}
        reference_row = (named[layer.grad_of] if layer.grad_of in named
                         else grad_reference(run.layers))
        last = reference_row.grad
        relative = (layer.grad.std / last.std if layer.grad and layer.grad.std is not None
                    and last and last.std else None)
        reference = ("the last hidden layer's" if run.model is None
                     else f"layer {reference_row.name}'s")
        return (f"grad std {number(layer.grad.std if layer.grad else None)} is "
                f"{number(relative)} × {reference} ({side} {t.get(flag)})")
    if flag == "grad_zero":
        return "weight gradients are exactly zero: these weights cannot learn"
    if flag in ("exploding", "vanishing"):
        side = ">" if flag == "exploding" else "<"
        growth = (f"√{layer.scale_allowed ** 2:.0f} × " if layer.scale_allowed is not None
                  and layer.scale_allowed > 1 else "")
        reference = ("input std" if layer.scale_of in (None, "input")
                     else f"{layer.scale_of}'s std")
        return f"post std {number(layer.post.std)} {side} {t.get(flag)} × {growth}{reference}"
    if flag == "large_branch":
        return (f"this branch is {number(layer.branch_ratio)} × the stream it is added to "
                f"(rms; > {t.get('branch')})")
    if flag == "entropy_collapse":
        heads = layer.attention_entropy or ()
        low = min((e for e in heads if e is not None), default=None)
        which = heads.index(low) if low is not None else None
        return (f"head {which} attends to one key: attention entropy {number(low)} "
                f"(< {t.get('attention_entropy')})")
    if flag == "logit_growth":
        return (f"largest attention logit {number(layer.max_logit)} "
                f"(> {t.get('attention_logit')}): softmax is one-hot there")
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
        renderables.append(_verdict_text(run, report, width))
        for line in (train_line(run), lsuv_line(run)):
            if line:
                renderables.append(Text(line if width is None else wrap_message(line, width)))
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
                         "meas/exp", "sat", "dead", "pre std", "attn H", "branch", "module", "ΔW",
                         "grad std", "post mean")


def column_rank(name: str, leaving: tuple[str, ...]) -> int:
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
    spec = [Column(name, [row[name] for row in rows], rank=column_rank(name, LAYER_COLUMNS_LEAVING),
                   justify="left" if name in TEXT_CELLS and run.model is not None else "right")
            for name in names[:-1]]
    spec.append(Column("flags", [row["flags"] for row in rows], justify="left", wrap=True,
                       min_width=max(len(f) for f in FLAGS)))
    return fit(spec, width, title=run.scheme)


def _verdict_text(run: Run, report: Report, width: int | None = None) -> Text:
    """The verdict line, its scheme in bold and its verdict in the flag's colour; wrapped to
    `width` as actstat wraps a message (layout.wrap_message: `χ₁ = 1.01` and `layer 4` whole,
    continuations indented), not where Rich would break it."""
    line = verdict_line(run, report)
    if width is not None:
        line = wrap_message(line, width)
    head, _, rest = line.partition(": ")
    word = rest.split(None, 1)[0] if rest.strip() else ""
    text = Text(head + ": ", style="bold")
    text.append(word, style=f"bold {FLAG_STYLES[run.verdict]}")
    text.append(rest[len(word):])
    return text


def table_text(report: Report) -> str:
    """The tables as plain text (no colour), as they appear in a file or a pipe: at their natural
    width (a terminal fits them to its width; a file need not)."""
    return plain_text(tables(report), 1000)


def plain_text(renderables: list[RenderableType], width: int, wrap: bool = False) -> str:
    """The renderables as plain text; `wrap`: every line within `width` (a terminal's), else
    a line as long as its content (a file's)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      highlight=False, legacy_windows=False)
    for renderable in renderables:
        console.print(renderable, soft_wrap=not wrap)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


# ----------------------------------------------------------------------------------------------
# text formats


def to_json(report: Report) -> str:
    """The documented JSON contract (docs/json-schema.md); strict: no NaN, no Infinity: the
    record's own `to_json`, in the table of formats beside the others."""
    return report.to_json()


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


def input_line(report: Report) -> str:
    return (f"{report.input.source}; batch {report.input.batch_size} × {report.input.features}, "
            f"input std {number(report.input.std)}; device {report.device}, torch "
            f"{report.torch_version}, actstat {report.actstat_version}.")


def to_markdown(report: Report) -> str:
    """A heading, one pipe table and one verdict line per scheme (GitHub-flavoured Markdown)."""
    lines = ["## actstat report", "", input_line(report), ""]
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
    parts = [f"<p>{html.escape(input_line(report))}</p>"]
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
# sparklines and histogram rows (the compare view and actstat train's tables draw them too)


def quantise(values: list[float | None], levels: int, lo: float, hi: float) -> list[int | None]:
    """Each value's level 0..levels-1 on [lo, hi] (a flat range: the middle level; None: none).
    Sparklines and histogram rows are both drawn from this."""
    if hi - lo < 1e-12:
        return [None if v is None else (levels - 1) // 2 for v in values]
    return [None if v is None else round((v - lo) / (hi - lo) * (levels - 1)) for v in values]


def sparkline(values: list[float | None], width: int = 40) -> str:
    """log10 of each value as one of eight bar heights, scaled to the row's own range (its
    smallest to its largest value, the same at every width); a value that is 0, missing or not
    finite is a space. A constant row is a flat middle bar. More than `width` values shrink to
    `width` cells by `shrunk`, which keeps the curve's shape."""
    logs = [math.log10(v) if v is not None and v > 0 and math.isfinite(v) else None
            for v in values]
    present = [v for v in logs if v is not None]
    if not present:
        return " " * min(len(values), width)
    lo, hi = min(present), max(present)
    if len(logs) > width:
        logs = shrunk(logs, width, levels=len(SPARK))
    levels = quantise(logs, len(SPARK), lo, hi)
    return "".join(" " if level is None else SPARK[level] for level in levels)


# an outlier lies this many median absolute deviations from the row's median: the robust rule
# of Leys et al. 2013 (Journal of Experimental Social Psychology 49), at its conservative 3
OUTLIER_MADS = 3.0


def shrunk(logs: list[float | None], cells: int, levels: int) -> list[float | None]:
    """`logs` (a row's log values, None: none) in `cells` equal stretches, in order, each drawn
    as one value: its outlier farthest from the row's median, if it holds one, else the middle
    of its smallest and largest value. An outlier lies more than OUTLIER_MADS median absolute
    deviations (and one of `levels` bar heights) from the median, in a row that has fewer of
    them than half its cells: more are the row's own pattern (a block's row that sits apart
    from the others), not spikes. So a one-layer spike or dip keeps its height and its place, a
    ramp still rises from bottom to top, a peak stays where it was, and repeated blocks (a
    residual net's rows, each at its own scale) read the same in every cell, whichever of a
    block's rows a stretch starts on, as long as a stretch holds a block. Taking every k-th
    value instead lost spikes, and drew a block's rows in whatever order the stride fell on
    them. A stretch with no value is blank."""
    present = [v for v in logs if v is not None]
    middle = statistics.median(present)
    spread = statistics.median(abs(v - middle) for v in present)
    outlying = max(OUTLIER_MADS * spread, (max(present) - min(present)) / levels)
    if 2 * sum(abs(v - middle) > outlying for v in present) >= cells:
        outlying = math.inf
    out: list[float | None] = []
    for cell in range(cells):
        stretch = [v for v in logs[cell * len(logs) // cells:(cell + 1) * len(logs) // cells]
                   if v is not None]
        outliers = [v for v in stretch if abs(v - middle) > outlying]
        if outliers:  # the farthest; a tie goes to the larger
            out.append(max(outliers, key=lambda v: (abs(v - middle), v)))
        else:
            out.append((min(stretch) + max(stretch)) / 2 if stretch else None)
    return out


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


TEXT_FORMATS: dict[str, Callable[[Report], str]] = {
    "table": table_text,
    "json": to_json,
    "csv": to_csv,
    "markdown": to_markdown,
}
