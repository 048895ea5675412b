"""Render a training run (`actstat train`): per scheme a table of its layers through training
(std and gradient std as sparklines over the recorded steps), its loss, its events and its
verdict; with several schemes, one summary row each; with --hist, the "colorful dimension"
(a layer's histogram over steps). Nothing here prints; actstat/render.py draws the rest."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import RenderableType
from rich.text import Text

from actstat.layout import Column, fit, left_out_note, wrap_text
from actstat.records import Event, Report, Run, Trajectory, TrajectoryLayer
from actstat.render import SHADES, merge_bins, number, percent, quantise, sparkline

SPARK_STEPS = 40  # a sparkline's natural width: one cell per recorded step, at most this many
HEAT_ROWS = 10  # a heat map's height: its histogram's bins merged to this many rows
HEAT_WIDTH = 60  # and its width: at most this many recorded steps, sampled evenly
EVENTS_SHOWN = 5  # events listed under a scheme's table; the JSON has them all
TRAINED_STYLE = {True: "green", False: "red", None: "yellow"}


def verdict_of(t: Trajectory) -> str:
    """`trained`, `did not train`, `diverged` (non-finite loss) or `stopped` (Ctrl-C early)."""
    if t.stopped == "nonfinite":
        return "diverged"
    if t.trained is None:
        return "stopped" if t.stopped == "interrupted" else "not judged"
    return "trained" if t.trained else "did not train"


def event_text(event: Event, t: Trajectory) -> str:
    """One event as a sentence: `layer 7 dead > 50 % from step 120`."""
    where = f"layer {event.layer}" if event.layer is not None else ""
    if event.kind == "dead":
        return f"{where} dead {percent(event.value)} from step {event.step}"
    if event.kind == "std_jump":
        return (f"{where} std ×{number(event.value)} between steps {event.since} and "
                f"{event.step}")
    if event.kind == "nonfinite_loss":
        return f"loss non-finite at step {event.step}"
    return f"interrupted at step {event.step} of {t.planned_steps}"


def summary_line(run: Run) -> str:
    """The scheme's training in one line: its verdict, the loss from step 0 to the end, what
    trained it, and its first event."""
    t = run.trajectory
    assert t is not None
    loss = f"loss {number(t.loss[0] if t.loss else None)} → {number(_last(t.loss))}"
    if t.loss_drop is not None:
        loss += f" ({'fell' if t.loss_drop >= 0 else 'rose'} {abs(100 * t.loss_drop):.0f} %"
        final = _final(t)
        if t.trained is False and t.chance_loss is not None and final is not None \
                and final >= t.chance_loss:
            loss += f", not below chance {number(t.chance_loss)}"
        loss += ")"
    accuracy = ""
    if t.accuracy is not None and _last(t.accuracy) is not None:
        accuracy = f", accuracy {100 * _last(t.accuracy):.0f} %"
    ran = t.steps[-1] + 1 if t.steps else 0
    how = (f"{ran} of {t.planned_steps} steps" if ran < t.planned_steps
           else f"{t.planned_steps} steps")
    how += f" of {_optimiser(t)}, batch {t.batch_size}"
    first = f"; first event: {event_text(t.events[0], t)}" if t.events else "; no events"
    return f"{run.scheme}: {verdict_of(t)} — {loss}{accuracy} over {how}{first}"


def _final(t: Trajectory) -> float | None:
    """Where the loss ended, as analysis judges it: 1 − loss_drop of step 0's."""
    if t.loss_drop is None or not t.loss or t.loss[0] is None:
        return None
    return t.loss[0] * (1 - t.loss_drop)


def _optimiser(t: Trajectory) -> str:
    name = f"{t.optimizer} lr {t.lr:g}"
    if t.momentum:
        name += f" {'momentum' if t.optimizer == 'sgd' else 'β₁'} {t.momentum:g}"
    if t.warmup:
        name += f", warm-up {t.warmup}"
    return name


def trajectory_table(run: Run, width: int | None = None) -> list[RenderableType]:
    """The scheme's layers through training: std and grad std over the recorded steps
    (sparklines, log scale, each row on its own range), the std at step 0 and at the end, the
    dead fraction at the end, and the layer's first event."""
    t = run.trajectory
    assert t is not None
    firsts: dict[str, Event] = {}
    for event in t.events:
        if event.layer is not None:
            firsts.setdefault(event.layer, event)
    natural = min(len(t.steps), SPARK_STEPS)

    def spark(values: Sequence[Sequence[float | None]]) -> object:
        return lambda cells: [Text(sparkline(list(v), cells)) for v in values]

    stds = [layer.std for layer in t.layers]
    grads = [layer.grad_std for layer in t.layers]
    columns = [
        Column("layer", [Text(layer.name) for layer in t.layers], justify="left"),
        Column("std over steps", spark=spark(stds), spark_width=natural, rank=2),
        Column("std start → end", [Text(f"{number(layer.std[0])} → {number(_last(layer.std))}")
                                   for layer in t.layers]),
        Column("dead", [Text(percent(_last(layer.dead)) if layer.dead else "—")
                        for layer in t.layers], rank=3),
        Column("grad std over steps", spark=spark(grads), spark_width=natural, rank=4),
        Column("first event", [Text(_short(firsts.get(layer.name)), style="red"
                                    if layer.name in firsts else "")
                               for layer in t.layers], justify="left", wrap=True, min_width=12),
    ]
    fitted = fit(columns, width, title=f"{run.scheme}: training")
    out: list[RenderableType] = [fitted.table]
    left = left_out_note(fitted.left_out, width)
    if left is not None:
        out.append(left)
    out.append(Text(f"loss {sparkline(list(t.loss), min(natural, 60))}  "
                    f"steps {t.steps[0] if t.steps else 0}–{t.steps[-1] if t.steps else 0}"))
    head, _, rest = summary_line(run).partition(": ")
    verdict = verdict_of(t)
    line = Text(head + ": ", style="bold")
    line.append(verdict, style=f"bold {TRAINED_STYLE[t.trained if t.stopped != 'nonfinite' else False]}")
    line.append(rest[len(verdict):])
    out.append(_wrapped(line, width))
    for event in t.events[:EVENTS_SHOWN]:
        out.append(_wrapped(Text(f"  step {event.step}: {event_text(event, t)}", style="none"),
                            width))
    if len(t.events) > EVENTS_SHOWN:
        out.append(_wrapped(Text(f"  … and {len(t.events) - EVENTS_SHOWN} more events (-f json "
                                 "has them all)", style="dim"), width))
    return out


def _short(event: Event | None) -> str:
    if event is None:
        return ""
    if event.kind == "dead":
        return f"dead from {event.step}"
    return f"std ×{number(event.value)} by {event.step}"


def _wrapped(text: Text, width: int | None) -> Text:
    """A line of prose broken to `width` (its styles kept when it fits as it is)."""
    if width is None or len(text.plain) <= width:
        return text
    return Text(wrap_text(text.plain, width), style=text.style or "bold")


def heat_map(run: Run, layer: TrajectoryLayer, width: int | None = None) -> list[Text]:
    """The colorful dimension of one layer: its histogram (bins from the bottom, low values, to
    the top) at each recorded step (left to right), shaded by log(1 + count) on the map's
    largest count; bins merged to HEAT_ROWS rows, steps sampled to fit."""
    t = run.trajectory
    assert t is not None and layer.histogram is not None and layer.hist_range is not None
    lo, hi = layer.hist_range
    cells = min(len(layer.histogram), HEAT_WIDTH)
    if width is not None:
        cells = max(8, min(cells, width - 12))
    picked = [round(i * (len(layer.histogram) - 1) / max(cells - 1, 1)) for i in range(cells)]
    columns = [merge_bins(layer.histogram[i], HEAT_ROWS) for i in picked]
    logs = [[math.log1p(c) if c > 0 else None for c in column] for column in columns]
    top = max((v for column in logs for v in column if v is not None), default=0.0)
    shades = [quantise(column, len(SHADES) - 1, 0.0, top) for column in logs]
    rows = len(columns[0]) if columns else 0
    lines = [_wrapped(Text(
        f"colorful dimension: {run.scheme}, layer {layer.name} (values {number(lo)} to "
        f"{number(hi)} from bottom to top; steps {t.steps[0]}–{t.steps[-1]} left to right; "
        "darker: more values, log scale)", style="bold"), width)]
    for r in reversed(range(rows)):
        edge = number(hi) if r == rows - 1 else number(lo) if r == 0 else ""
        cells_text = "".join(" " if shade[r] is None else SHADES[max(shade[r], 0) + 1]
                             for shade in shades)
        lines.append(Text(f"{edge:>9} │{cells_text}│"))
    return lines


def heat_layers(t: Trajectory, names: Sequence[str] | None) -> list[TrajectoryLayer]:
    """The layers to draw heat maps of: those named, else the first and the last with a
    histogram (the input side and the output side of the network)."""
    with_hist = [layer for layer in t.layers if layer.histogram is not None]
    if names:
        return [layer for layer in with_hist if layer.name in names]
    if len(with_hist) <= 2:
        return with_hist
    return [with_hist[0], with_hist[-1]]


def compare_table(report: Report, width: int | None = None) -> list[RenderableType]:
    """One row per scheme: its verdict, loss at step 0 and at the end, how far it fell, and
    its first event."""
    runs = [run for run in report.runs if run.trajectory is not None]
    rows = [(run, run.trajectory) for run in runs]
    columns = [
        Column("scheme", [Text(run.scheme) for run, _ in rows], justify="left", wrap=True,
               min_width=14),
        Column("training", [Text(verdict_of(t), style=TRAINED_STYLE[
            t.trained if t.stopped != "nonfinite" else False]) for _, t in rows],
               justify="left"),
        Column("loss start", [Text(number(t.loss[0] if t.loss else None)) for _, t in rows],
               rank=2),
        Column("loss end", [Text(number(_last(t.loss))) for _, t in rows]),
        Column("loss", spark=lambda cells: [Text(sparkline(list(t.loss), cells))
                                            for _, t in rows],
               spark_width=min(max(len(t.steps) for _, t in rows), SPARK_STEPS), rank=3),
        Column("first event", [Text(event_text(t.events[0], t) if t.events else "—")
                               for _, t in rows], justify="left", wrap=True, min_width=16),
    ]
    fitted = fit(columns, width, title=f"{len(rows)} schemes through training")
    out: list[RenderableType] = [fitted.table]
    left = left_out_note(fitted.left_out, width)
    if left is not None:
        out.append(left)
    return out


def training_renderables(report: Report, width: int | None = None,
                         heat: Sequence[str] | None = None) -> list[RenderableType]:
    """Every scheme's trajectory table (and heat maps, with histograms), then the summary
    table when there are several schemes."""
    out: list[RenderableType] = []
    for run in report.runs:
        if run.trajectory is None:
            continue
        out += trajectory_table(run, width)
        for layer in heat_layers(run.trajectory, heat):
            out += [Text(""), *heat_map(run, layer, width)]
        out.append(Text(""))
    if sum(run.trajectory is not None for run in report.runs) > 1:
        out += compare_table(report, width)
    return out


def _last(values: Sequence[float | None] | None) -> float | None:
    """The last recorded value that is a number (a diverged run's last step has none)."""
    if not values:
        return None
    return next((v for v in reversed(values) if v is not None), None)
