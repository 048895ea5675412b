"""The coord-check view of a Report: the slopes (layers × steps) as a table that reads at 80
columns, a log-log picture of the layer that moves most with width, and the verdict line."""

from __future__ import annotations

import math
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from actstat.layout import Column, fit, left_out_note
from actstat.records import WIDTH_STABLE, CoordCheck, CoordLayer, Report
from actstat.render import plain_text

FLAG_STYLE = {"grows_with_width": "red", "shrinks_with_width": "yellow"}
# what a layer growing with width usually means, for the verdict line (docs/coord-check.md)
ADVICE = {
    ("sp", "adam"): "under SP, Adam's updates grow with width: use μP (--param mup), or "
                    "learning rates that shrink with width",
    ("sp", "sgd"): "under SP, the readout's updates grow with width: use μP (--param mup), "
                   "or a smaller readout",
    ("mup", "adam"): "a layer outside μP's table: check its multiplier and learning rate",
    ("mup", "sgd"): "a layer outside μP's table: check its multiplier and learning rate",
}
OWN_ADVICE = ("its updates or init grow with width: μP it (mup.set_base_shapes, MuReadout, "
              "MuAdam) or scale that layer's learning rate with 1/width")
PICTURE_ROWS = 11  # the log-log picture's height at most; a row is a doubling, or more


def slope_text(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def coord_tables(report: Report, width: int | None = None) -> list[RenderableType]:
    """The table of slopes, a note when step columns left, the picture and the verdict."""
    check = _check(report)
    fitted = _table(check, width)
    # the title on a line of its own: as the table's title it would wrap at the table's width,
    # narrower than the terminal's
    renderables: list[RenderableType] = [Text(title(check), style="italic"), fitted.table]
    note = left_out_note(fitted.left_out, width)
    if note:
        renderables.append(note)
    renderables += [Text(""), *picture(check), Text(""), verdict_text(check)]
    renderables += [Text(line, style="red") for line in event_lines(check)]
    return renderables


def coord_text(report: Report) -> str:
    return plain_text(coord_tables(report), 1000)


def _check(report: Report) -> CoordCheck:
    if report.coord_check is None:
        raise ValueError("not a coord check's report")
    return report.coord_check


def _table(check: CoordCheck, width: int | None) -> Any:
    steps = list(check.steps)
    # steps leave a narrow terminal from the middle: step 0, the first update and the last stay
    keep = {steps[0], steps[min(1, len(steps) - 1)], steps[-1]}
    middle = [s for s in steps if s not in keep]
    rank = {s: len(middle) - abs(len(middle) // 2 - i) for i, s in enumerate(middle)}
    columns = [Column("layer", [Text(layer.name) for layer in check.layers], justify="left")]
    for i, step in enumerate(steps):
        cells = []
        for layer in check.layers:
            value = layer.slope[i]
            flagged = value is not None and abs(value) > check.threshold
            style = FLAG_STYLE["grows_with_width" if (value or 0) > 0 else
                                "shrinks_with_width"] if flagged else ""
            cells.append(Text(slope_text(value), style=style))
        columns.append(Column(f"step {step}", cells, rank=rank.get(step, 0)))
    columns.append(Column("± seeds", [Text(_spread(layer)) for layer in check.layers],
                          rank=len(middle) + 1))
    columns.append(Column("flags", [Text(", ").join(Text(f, style=FLAG_STYLE[f])
                                                     for f in layer.flags)
                                    for layer in check.layers],
                          justify="left", wrap=True, min_width=len("shrinks_with_width")))
    return fit(columns, width)


def _spread(layer: CoordLayer) -> str:
    present = [s for s in layer.spread if s is not None]
    return f"{max(present):.2f}" if present else "—"


def title(check: CoordCheck) -> str:
    param = {"sp": "SP", "mup": f"μP (base {check.base_width})", "own": "the model's own"}[
        check.param]
    return (f"slope of ln mean|x| vs ln width ({len(check.widths)} widths, "
            f"{check.widths[0]}–{check.widths[-1]}): {param}, {check.optimizer} lr "
            f"{check.lr:g}, {len(check.seeds)} seed(s)")


def picture(check: CoordCheck) -> list[Text]:
    """The flagged layer that moves most with width (width-stable: the last layer, the
    logits): its mean |x| at each width relative to the smallest width's, on log-log axes, for
    step 0, the first update and the last step, each marked by its number (`*` where two
    meet); a row is a doubling (or more, to fit PICTURE_ROWS)."""
    layer = _pictured(check)
    if layer is None:
        return []
    shown = sorted({check.steps[0], check.steps[min(1, len(check.steps) - 1)], check.steps[-1]})
    steps = [s for s in shown if any(_mean(layer, w, s) for w in range(len(check.widths)))]
    points: dict[tuple[int, int], str] = {}
    logs = {}
    for step in steps:
        base = _mean(layer, 0, step)
        for w in range(len(check.widths)):
            size = _mean(layer, w, step)
            if base and size:
                logs[(w, step)] = math.log2(size / base)
    if not logs:
        return []
    top, bottom = round(max(logs.values())), round(min(logs.values()))
    if top == bottom:  # flat: a row above and below, for scale
        top, bottom = top + 1, bottom - 1
    per_row = max(1, math.ceil((top - bottom + 1) / PICTURE_ROWS))
    top, bottom = per_row * math.ceil(top / per_row), per_row * math.floor(bottom / per_row)
    for (w, step), value in logs.items():
        row = round(value / per_row)
        marker = str(step % 10)
        points[(row, w)] = "*" if points.get((row, w), marker) != marker else marker
    cell = max(len(str(w)) for w in check.widths) + 1
    labels = {r: _times(2.0 ** (r * per_row)) for r in range(bottom // per_row, top // per_row + 1)}
    pad = max(len(label) for label in labels.values())
    lines = [Text(f"{layer.name}: mean|x| ÷ width {check.widths[0]}'s at steps "
                  f"{', '.join(map(str, steps))} (log-log; flat: width-stable)", style="bold")]
    for r in range(top // per_row, bottom // per_row - 1, -1):
        row = "".join(points.get((r, w), "·" if r == 0 else " ").center(cell)
                      for w in range(len(check.widths)))
        lines.append(Text(f"{labels[r].rjust(pad)} ┤{row.rstrip()}"))
    axis = "".join(str(w).center(cell) for w in check.widths)
    lines.append(Text(f"{' ' * pad}  {axis.rstrip()}  width"))
    return lines


def _times(factor: float) -> str:
    return f"×{factor:g}" if factor >= 1 else f"×1/{1 / factor:g}"


def _pictured(check: CoordCheck) -> CoordLayer | None:
    flagged = [layer for layer in check.layers if layer.flags]
    candidates = flagged or list(check.layers[-1:])
    scored = [(max((abs(s) for s in layer.slope if s is not None), default=-1.0), i)
              for i, layer in enumerate(candidates)]
    if not scored:
        return None
    return candidates[max(scored)[1]]


def _mean(layer: CoordLayer, width: int, step: int) -> float | None:
    """The seeds' mean size at one width and step; None if one is missing or not positive."""
    sizes = layer.sizes[width][step]
    if any(s is None or not s > 0 for s in sizes):
        return None
    return sum(sizes) / len(sizes)  # type: ignore[arg-type]


def verdict_line(check: CoordCheck) -> str:
    """`verdict: width-stable (...)`, or the worst layer, its slope and step, and what it means."""
    stable = WIDTH_STABLE
    if check.verdict == stable:
        worst = max((abs(s) for layer in check.layers for s in layer.slope if s is not None),
                    default=0.0)
        return (f"verdict: {stable} (every slope within ±{check.threshold:g}; the largest "
                f"{worst:.2f})")
    layer, step = _worst(check)
    value = layer.slope[check.steps.index(step)]
    assert value is not None
    flags = sorted({f for layer_ in check.layers for f in layer_.flags})
    names = [layer_.name for layer_ in check.layers if layer_.flags]
    advice = OWN_ADVICE if check.param == "own" else ADVICE[(check.param, check.optimizer)]
    return (f"verdict: {check.verdict}: {layer.name} goes as width^{value:.2f} at step {step} "
            f"(flagged from step {layer.first_step}; {len(names)} of {len(check.layers)} "
            f"layers {' / '.join(flags)}): {advice}")


def _worst(check: CoordCheck) -> tuple[CoordLayer, int]:
    best: tuple[float, int, int] | None = None
    for i, layer in enumerate(check.layers):
        if check.verdict not in layer.flags:
            continue
        for step, value in zip(check.steps, layer.slope):
            if value is not None and (best is None or abs(value) > best[0]):
                best = (abs(value), i, step)
    assert best is not None
    return check.layers[best[1]], best[2]


def verdict_text(check: CoordCheck) -> Text:
    line = verdict_line(check)
    head, _, rest = line.partition(": ")
    text = Text(head + ": ", style="bold")
    word = rest.split(" ")[0].rstrip(":")
    style = "green" if check.verdict == WIDTH_STABLE else FLAG_STYLE[check.verdict]
    text.append(word, style=f"bold {style}")
    text.append(rest[len(word):])
    return text


def event_lines(check: CoordCheck) -> list[str]:
    """One line per copy whose loss went non-finite: its width, seed and step."""
    return [f"diverged: {event.layer}: the loss went non-finite at step {event.step}"
            for event in check.events]


def coord_markdown(report: Report) -> str:
    check = _check(report)
    lines = [f"**{title(check)}**", "",
             "| layer | " + " | ".join(f"step {s}" for s in check.steps) + " | flags |",
             "| --- | " + " | ".join("---:" for _ in check.steps) + " | --- |"]
    for layer in check.layers:
        lines.append(f"| {layer.name} | " + " | ".join(slope_text(s) for s in layer.slope)
                     + f" | {', '.join(layer.flags)} |")
    return "\n".join([*lines, "", verdict_line(check), ""]) + "\n"


def coord_csv(report: Report) -> str:
    """One line per layer, width, step and seed: the coordinate size, and the layer's slope at
    that step."""
    import csv
    import io

    check = _check(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "width", "step", "seed", "abs_mean", "slope", "spread", "flags"])
    for layer in check.layers:
        for w, width in enumerate(check.widths):
            for i, step in enumerate(check.steps):
                for k, seed in enumerate(check.seeds):
                    size = layer.sizes[w][i][k]
                    writer.writerow([layer.name, width, step, seed,
                                     "" if size is None else repr(size),
                                     "" if layer.slope[i] is None else repr(layer.slope[i]),
                                     "" if layer.spread[i] is None else repr(layer.spread[i]),
                                     " ".join(layer.flags)])
    return buffer.getvalue()
