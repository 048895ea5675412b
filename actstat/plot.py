"""Plot: a Report -> one figure (PNG, SVG or PDF) with matplotlib. No torch is imported here, so
`actstat plot` draws a saved report quickly."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from actstat.atomic import write_atomic
from actstat.errors import ActstatError
from actstat.records import Report

FIGURE_INCHES = (12.0, 8.0)
DPI = 100
MAX_HEATMAPS = 6
FORMATS = (".png", ".svg", ".pdf")


class PlotError(ActstatError):
    """A figure cannot be drawn (matplotlib missing, unknown file type)."""


def series(report: Report) -> dict[str, Any]:
    """Everything the figure draws, per scheme label: post std, expected post std (theory),
    gradient std, dead and saturated fractions by layer, and the histogram rows."""
    out: dict[str, dict[str, Any]] = {name: {} for name in (
        "post_std", "expected_std", "grad_std", "dead", "saturated", "histograms")}
    for run in report.runs:
        layers = run.layers
        out["post_std"][run.scheme] = [layer.post.std for layer in layers]
        if run.theory is not None:
            out["expected_std"][run.scheme] = [layer.post.expected_std for layer in layers]
        if any(layer.grad is not None for layer in layers):
            out["grad_std"][run.scheme] = [layer.grad.std if layer.grad else None
                                           for layer in layers]
        if any(layer.post.dead is not None for layer in layers):
            out["dead"][run.scheme] = [layer.post.dead for layer in layers]
        if any(layer.post.saturated is not None for layer in layers):
            out["saturated"][run.scheme] = [layer.post.saturated for layer in layers]
        if any(layer.post.histogram is not None for layer in layers):
            out["histograms"][run.scheme] = [layer.post.histogram for layer in layers]
    return out


def check_figure(path: Path | str) -> None:
    """A PlotError now if `draw(report, path)` could not work later: an unknown suffix or no
    matplotlib (looked up, not imported: that takes a second). Output path problems are
    atomic.check_writable's."""
    import importlib.util

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise PlotError(f"{path}: figures are written as {', '.join(FORMATS)}, not "
                        f"'{path.suffix or '(no suffix)'}'")
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotError(MISSING_MATPLOTLIB)


MISSING_MATPLOTLIB = "figures need matplotlib, an optional extra: pip install 'actstat[plot]'"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise PlotError(MISSING_MATPLOTLIB) from None
    return plt


def draw(report: Report, path: Path | str) -> None:
    """Draw the report's figure to `path` (its suffix picks the format), atomically: the
    layers through training for a report of `actstat train`, the layers over depth otherwise."""
    path = Path(path)
    check_figure(path)
    plt = _pyplot()
    if report.coord_check is not None:
        _save(plt, _coord_figure(plt, report), path)
        return
    if any(run.trajectory is not None for run in report.runs):
        figure = _training_figure(plt, report)
        _save(plt, figure, path)
        return
    data = series(report)
    heatmaps = list(data["histograms"].items())[:MAX_HEATMAPS]
    figure = plt.figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    top, bottom = (figure.subfigures(2, 1, height_ratios=[1.1, 1]) if heatmaps
                   else (figure, None))
    std_axes, grad_axes, fraction_axes = top.subplots(1, 3)
    depth = len(report.runs[0].layers) if report.runs else 0
    layers = list(range(1, depth + 1))
    # a user's model: its rows by name (the first run's; runs of one model share them)
    names = ([layer.name for layer in report.runs[0].layers]
             if report.runs and report.runs[0].model is not None else None)
    what = "hidden layer" if names is None else "layer"
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {scheme: palette[i % len(palette)] for i, scheme in enumerate(data["post_std"])}

    for scheme, values in data["post_std"].items():
        std_axes.plot(layers, _positive(values), marker=".", color=colour[scheme], label=scheme)
        if scheme in data["expected_std"]:
            std_axes.plot(layers, _positive(data["expected_std"][scheme]), linestyle="--",
                          color=colour[scheme], alpha=0.7)
    _style(std_axes, "post std (dashed: mean-field theory)", "std", log=True, names=names)
    std_axes.legend(fontsize="x-small")

    for scheme, values in data["grad_std"].items():
        grad_axes.plot(layers, _positive(values), marker=".", color=colour[scheme], label=scheme)
    _style(grad_axes, "gradient std, dL/d(pre)", "std", log=bool(data["grad_std"]), names=names)
    if not data["grad_std"]:
        grad_axes.text(0.5, 0.5, "measured with --no-grad", ha="center", va="center",
                       transform=grad_axes.transAxes)

    for kind, style in (("dead", "-"), ("saturated", ":")):
        for scheme, values in data[kind].items():
            fraction_axes.plot(layers, [math.nan if v is None else v for v in values],
                               linestyle=style, color=colour[scheme])
    _style(fraction_axes, "dead (solid), saturated (dotted)", "fraction of layer", log=False,
           names=names)
    fraction_axes.set_ylim(-0.02, 1.02)

    if heatmaps and bottom is not None:
        for axes, (scheme, counts) in zip(bottom.subplots(1, len(heatmaps), squeeze=False)[0],
                                          heatmaps):
            width = max(len(row) for row in counts if row is not None)
            image = [[math.log1p(c) for c in row] if row is not None else [math.nan] * width
                     for row in counts]
            axes.imshow(image, aspect="auto", cmap="magma", interpolation="nearest",
                        extent=(0, 1, depth + 0.5, 0.5))
            axes.set_title(scheme, fontsize="small")
            axes.set_xticks([0, 1], ["min", "max"])
            axes.set_ylabel(what)
            if names is not None:
                axes.set_yticks(layers, names, fontsize="x-small")
        bottom.suptitle("post-activation histograms, each row over its layer's [min, max] "
                        "(brighter: more values, log scale)", fontsize="medium")
    figure.suptitle(f"actstat: {report.input.source}; batch {report.input.batch_size}, "
                    f"{depth} {what}s")
    _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lower().lstrip("."))
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


MAX_PANELS = 6  # steps drawn in a coord-check figure: the first, the last and between


def _coord_figure(plt: Any, report: Report) -> Any:
    """The coordinate check as its authors draw it: a panel per step, width on a log x-axis,
    mean |x| on a log y-axis (seeds averaged, their range shaded), a line per layer, each
    labelled with its slope."""
    check = report.coord_check
    assert check is not None
    steps = list(check.steps)
    if len(steps) > MAX_PANELS:
        picked = {round(i * (len(steps) - 1) / (MAX_PANELS - 1)) for i in range(MAX_PANELS)}
        steps = [steps[i] for i in sorted(picked)]
    figure = plt.figure(figsize=(3.2 * len(steps) + 1.5, 4.0), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(steps), sharey=True, squeeze=False)[0]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, step in zip(axes, steps):
        i = check.steps.index(step)
        for j, layer in enumerate(check.layers):
            points = [(w, [s for s in layer.sizes[k][i] if s is not None and s > 0])
                      for k, w in enumerate(check.widths)]
            points = [(w, sizes) for w, sizes in points if sizes]
            if not points:
                continue
            slope = layer.slope[i]
            label = f"{layer.name} ({'—' if slope is None else f'{slope:+.2f}'})"
            widths = [w for w, _ in points]
            colour = palette[j % len(palette)]
            ax.plot(widths, [sum(s) / len(s) for _, s in points], marker="o", color=colour,
                    label=label)
            ax.fill_between(widths, [min(s) for _, s in points], [max(s) for _, s in points],
                            color=colour, alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(check.widths), [str(w) for w in check.widths], minor=False)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_yscale("log")
        ax.set_title(f"step {step}")
        ax.set_xlabel("width")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", title="layer (slope)", title_fontsize="small")
    axes[0].set_ylabel("mean |x|")
    param = {"sp": "SP", "mup": f"μP (base {check.base_width})", "own": "the model's own"}[
        check.param]
    figure.suptitle(f"coordinate check: {param}, {check.optimizer} lr {check.lr:g}, "
                    f"{len(check.seeds)} seed(s): {check.verdict}")
    return figure


MAX_TRAINED = 4  # schemes drawn in a training figure (the JSON has them all)


def _training_figure(plt: Any, report: Report) -> Any:
    """The course's three charts per scheme, over training steps: every layer's std (coloured
    from the first layer to the last), its dead fraction, and the colorful dimension of the
    last activation layer; above them, the loss of every scheme."""
    runs = [run for run in report.runs if run.trajectory is not None][:MAX_TRAINED]
    figure = plt.figure(figsize=(FIGURE_INCHES[0], 2.6 * (len(runs) + 1)), dpi=DPI,
                        layout="constrained")
    rows = figure.subplots(len(runs) + 1, 3, squeeze=False)
    loss_axes = rows[0][0]
    for run in runs:
        t = run.trajectory
        assert t is not None
        loss_axes.plot(t.steps, _positive(list(t.loss)), label=run.scheme)
    _over_steps(loss_axes, "loss of the mini-batch", "loss", log=True)
    loss_axes.legend(fontsize="x-small")
    for axes in rows[0][1:]:
        axes.axis("off")
    rows[0][1].text(0, 0.5, "\n".join(f"{run.scheme}: {_verdict(run.trajectory)}"
                                       for run in runs), fontsize="small", va="center")
    colours = plt.get_cmap("viridis")
    for run, (std_axes, dead_axes, heat_axes) in zip(runs, rows[1:]):
        t = run.trajectory
        assert t is not None
        count = max(len(t.layers) - 1, 1)
        for k, layer in enumerate(t.layers):
            colour = colours(k / count)
            std_axes.plot(t.steps, _positive(list(layer.std)), color=colour, linewidth=1)
            if layer.dead is not None:
                dead_axes.plot(t.steps, [math.nan if v is None else v for v in layer.dead],
                               color=colour, linewidth=1)
        _over_steps(std_axes, f"{run.scheme}: std per layer (dark: first, light: last)", "std",
                    log=True)
        _over_steps(dead_axes, "dead fraction per layer", "fraction of units", log=False)
        dead_axes.set_ylim(-0.02, 1.02)
        hist = [layer for layer in t.layers if layer.histogram is not None]
        if hist:  # the last activation's, as the course draws it; else the last layer's
            layer = next((h for h in reversed(hist) if h.dead is not None), hist[-1])
            assert layer.histogram is not None and layer.hist_range is not None
            image = [[math.log1p(c) for c in column] for column in zip(*layer.histogram)]
            heat_axes.imshow(image, aspect="auto", cmap="magma", origin="lower",
                             interpolation="nearest",
                             extent=(t.steps[0], t.steps[-1], *layer.hist_range))
            heat_axes.set_title(f"colorful dimension, layer {layer.name} (log counts)",
                                fontsize="small")
            heat_axes.set_xlabel("step")
            heat_axes.set_ylabel("value")
        else:
            heat_axes.axis("off")
            heat_axes.text(0.5, 0.5, "histograms: train with --hist", ha="center",
                           va="center", transform=heat_axes.transAxes)
    figure.suptitle(f"actstat train: {report.input.source}")
    return figure


def _verdict(t: Any) -> str:
    if t.stopped == "nonfinite":
        return f"diverged at step {t.stopped_at}"
    drop = "" if t.loss_drop is None else f", loss fell {100 * t.loss_drop:.0f} %"
    return ("trained" if t.trained else "did not train" if t.trained is False
            else "not judged") + drop


def _over_steps(axes: Any, title: str, ylabel: str, *, log: bool) -> None:
    axes.set_title(title, fontsize="small")
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if log:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)


def _positive(values: list[float | None]) -> list[float]:
    return [v if v is not None and v > 0 else math.nan for v in values]


def _style(axes: Any, title: str, ylabel: str, *, log: bool,
           names: list[str] | None = None) -> None:
    """A panel's title and labels; a user model's layers are named on the axis."""
    axes.set_title(title, fontsize="small")
    axes.set_xlabel("hidden layer" if names is None else "layer")
    if names is not None:
        axes.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right",
                        fontsize="x-small")
    axes.set_ylabel(ylabel)
    if log:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
