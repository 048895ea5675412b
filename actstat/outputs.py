"""What a command writes: each command's view of a Report (or of a check's result) in the chosen
--format, as text for a file or a pipe and as Rich renderables for a terminal; and the outputs
checked before anything is measured.

Torch-free and silent: the CLI delivers a view (actstat/cli.py), and a problem found here is an
`ActstatError` it prints as one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from actstat import render, render_check, render_compare, render_coord, render_watch
from actstat.records import Report

CHECK_FORMATS = ("table", "json", "markdown")
TRAIN_FORMATS = ("table", "json")
COORD_FORMATS = ("table", "json", "csv", "markdown")  # coord_view's


class View(NamedTuple):
    """One output in one format: `text()`, whole, for a file or a pipe; `renderables(width)` for
    a terminal (width None: as wide as the tables are)."""

    text: Callable[[], str]
    renderables: Callable[[int | None], list[Any]]


def report_view(report: Report, format: str) -> View:
    """`run`: every scheme's per-layer table."""
    return View(lambda: render.TEXT_FORMATS[format](report),
                lambda width: render.tables(report, width))


def compare_view(report: Report, format: str, sort: str, detail: bool) -> View:
    """`compare`: one row per scheme (with --detail, every scheme's table first); JSON is the
    Report itself."""
    texts = {
        "table": lambda: (render.table_text(report) if detail else "")
        + render_compare.compare_text(report, sort),
        "json": lambda: render.to_json(report),
        "csv": lambda: render_compare.compare_csv(report, sort),
        "markdown": lambda: render_compare.compare_markdown(report, sort, detail),
    }
    return View(texts[format], lambda width: (render.tables(report, width) if detail else [])
                + render_compare.compare_renderables(report, sort, width))


def check_view(result: Any, format: str) -> View:
    """`check`: what drifted, against which baseline."""
    texts = {"table": render_check.check_text, "json": render_check.check_json,
             "markdown": render_check.check_markdown}
    return View(lambda: texts[format](result),
                lambda width: render_check.check_renderables(result, width))


def training_view(report: Report, format: str, heat: Sequence[str] | None) -> View:
    """`train`: every scheme's trajectory (and with histograms, the heat maps of `heat`)."""
    return View(lambda: render.to_json(report) if format == "json"
                else render.plain_text(render_watch.training_renderables(report, None, heat), 1000),
                lambda width: render_watch.training_renderables(report, width, heat))


def coord_view(report: Report, format: str) -> View:
    """`coord-check`: the slopes (layers × steps), the log-log picture and the verdict; JSON is
    the Report, CSV every size (layer, width, step, seed)."""
    texts = {"table": lambda: render_coord.coord_text(report),
             "json": lambda: render.to_json(report),
             "csv": lambda: render_coord.coord_csv(report),
             "markdown": lambda: render_coord.coord_markdown(report)}
    return View(texts[format], lambda width: render_coord.coord_tables(report, width))


def width_flagged(report: Report, failing: set[str]) -> list[tuple[str, str, int]]:
    """(layer, flag, first step) for every coord-check layer carrying a --fail-on flag."""
    check = report.coord_check
    if check is None:
        return []
    return [(layer.name, flag, layer.first_step or 0) for layer in check.layers
            for flag in layer.flags if flag in failing]


def flagged(report: Report, failing: set[str]) -> list[tuple[str, str, str]]:
    """(scheme, layer, flag) for every layer carrying one of the --fail-on flags; the layer as
    its table names it (a user's model: `0`, `blocks.1`, not its position)."""
    return [(run.scheme, render.layer_label(layer, run), flag) for run in report.runs
            for layer in run.layers for flag in layer.flags if flag in failing]


def preflight(resolved: Any, outputs: Sequence[Path | None], figure: Path | None = None,
              data_from: str = "") -> None:
    """What would fail after the measurement, checked before it: output paths, the figure's
    type and matplotlib, the data file (so a typo costs no run and prints nothing else;
    `data_from`: the option or file that named it)."""
    from actstat.atomic import check_writable
    from actstat.config import check_data_source
    from actstat.plot import check_figure

    for path in (*outputs, figure):
        if path is not None:
            check_writable(path)
    if figure is not None:
        check_figure(figure)
    if resolved is not None:
        check_data_source(resolved, data_from)
