"""Tables at 80, 100, 120 and 160 columns: every number whole or its column announced as left out."""

from __future__ import annotations

import io
import os
import re
import sys
from collections import Counter

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from actstat import render, render_check, render_compare
from actstat.check import compare as check_compare
from actstat.check import drift_bound
from actstat.config import LESSON_SCHEMES, load_config
from actstat.layout import SPARK_MIN, Column, fit, wrap_text
from actstat.pipeline import profile

WIDTHS = (80, 100, 120, 160)
TINY = {"data.batch_size": 64, "model.width": 16, "device": "cpu"}
# a number as the tables print it: 0.1493, -7.78e-05, 9.40e+06, 20.0%, 1.1%, 17, or a mean that
# is float noise, ≈0
NUMBER = re.compile(rf"{render.NOISE}|-?\d+(?:\.\d+)?(?:e[+-]\d+)?%?")


@pytest.fixture(scope="module")
def run_report():
    """One scheme of every kind of column: theory, gradients, training, histograms."""
    config = load_config(None, {**TINY, "model.depth": 6, "init": ["randn", "kaiming"],
                                "activation": ["tanh", "relu"], "train.steps": 2, "hist": True})
    return profile(config)


@pytest.fixture(scope="module")
def normed_report():
    """Residual blocks with LayerNorm: rows whose mean is float noise, printed ≈0."""
    return profile(load_config(None, {**TINY, "model.depth": 3, "model.block": "residual",
                                      "model.norm": "layernorm"}))


@pytest.fixture(scope="module")
def compare_report():
    config = load_config(None, {**TINY, "model.depth": 20}, default_schemes=LESSON_SCHEMES)
    return profile(config)


@pytest.fixture(scope="module")
def check_result(compare_report):
    config = load_config(None, {**TINY, "model.depth": 20, "seed": 1},
                         default_schemes=LESSON_SCHEMES)
    drifted = profile(config)
    compared, drifts, labels = check_compare(
        compare_report, drifted, metrics=("post_std", "pre_mean"), rtol=0.01, atol=0.01,
        tolerances={})
    from actstat.check import CheckResult

    assert drifts, "a different seed must drift somewhere, or this test checks nothing"
    return CheckResult(compared=compared, drifts=tuple(drifts),
                       breaches=tuple(drift_bound(drifted, 1.5)), flagged=(), config_changes=(),
                       schemes=tuple(labels), metrics=("post_std", "pre_mean"),
                       bound_checked=True)


def printed(renderables, width: int) -> str:
    """What a terminal of `width` columns shows (no colour)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      highlight=False, legacy_windows=False)
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue()


def numbers_of(table: Table) -> list[str]:
    """Every number cell of a fitted table (text columns, which may wrap, left out)."""
    cells = []
    for column in table.columns:
        if column.no_wrap:
            cells += [cell.plain for cell in column.cells if NUMBER.fullmatch(cell.plain.strip())]
    return cells


def assert_reads_right(renderables, width: int, tables: list[Table], all_columns: list[list[str]]):
    shown = printed(renderables, width)
    assert "…" not in shown, shown
    for line in shown.splitlines():
        if not line.startswith("left out"):
            assert cell_len(line) <= width, f"{cell_len(line)} > {width}: {line!r}"
    for table, names in zip(tables, all_columns):
        # each number cell appears whole in the table as printed (a number cut or folded onto
        # two lines leaves fragments, and fewer whole tokens than cells)
        tokens = Counter(NUMBER.findall(printed([table], width)))
        missing = Counter(cell.strip() for cell in numbers_of(table)) - tokens
        assert not missing, f"not printed whole at {width} columns: {sorted(missing)}"
        kept = [str(column.header) for column in table.columns]
        left = [name for name in names if name not in kept]
        notes = [line for line in shown.split("\n\n") if f"left out to fit {width} columns" in line]
        if left:
            assert any(all(name in " ".join(note.split()) for name in left) for note in notes), (
                f"left out {left} without saying so:\n{shown}")


def full_names(renderables) -> list[list[str]]:
    return [[str(c.header) for c in r.columns] for r in renderables if isinstance(r, Table)]


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_run_tables_read_right(run_report, width):
    full = full_names(render.tables(run_report, None))
    renderables = render.tables(run_report, width)
    tables = [r for r in renderables if isinstance(r, Table)]
    assert len(tables) == len(run_report.runs)
    assert_reads_right(renderables, width, tables, full)
    for table in tables:  # the layer, its post std and its flags always stay
        assert {"layer", "post std", "flags"} <= {str(c.header) for c in table.columns}


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_noise_means_read_right(normed_report, width):
    full = full_names(render.tables(normed_report, None))
    renderables = render.tables(normed_report, width)
    tables = [r for r in renderables if isinstance(r, Table)]
    assert_reads_right(renderables, width, tables, full)
    assert render.NOISE in printed(renderables, width)  # post mean, the last number to leave


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_compare_reads_right(compare_report, width):
    full = full_names(render_compare.compare_renderables(compare_report, "verdict", None))
    renderables = render_compare.compare_renderables(compare_report, "verdict", width)
    tables = [r for r in renderables if isinstance(r, Table)]
    assert_reads_right(renderables, width, tables, full)
    kept = {str(c.header) for c in tables[0].columns}
    assert {"scheme", "verdict", "first flag", "post std 1 → L", "grad 1/L"} <= kept
    shown = printed(renderables, width)
    for run in compare_report.runs:  # every scheme's row shows its verdict (none is blank)
        assert re.search(rf"\b{run.verdict}\b", shown)


@pytest.mark.slow
def test_compare_at_full_width_keeps_every_column(compare_report):
    renderables = render_compare.compare_renderables(compare_report, "verdict", None)
    # every column but train loss, which only a report with --steps has
    assert [str(c.header) for c in renderables[0].columns] == [
        c for c in render_compare.COMPARE_COLUMNS if c != "train loss"]
    assert len(renderables) == 1  # no note: nothing left out


@pytest.mark.slow
def test_sparklines_shrink_before_a_number_leaves(compare_report):
    # a point per hidden layer: the head's logits are not drawn
    natural = min(len(compare_report.runs[0].layers) - 1, 40)
    shrunk_with_every_number = []
    for width in range(80, 200):
        table = render_compare.compare_table(compare_report, "verdict", width).table
        columns = {str(c.header): c for c in table.columns}
        if "log std" in columns and {"gain", "dead", "sat", "χ₁"} <= set(columns):
            assert SPARK_MIN <= columns["log std"].width <= natural
            if columns["log std"].width < natural:
                shrunk_with_every_number.append(width)
    assert shrunk_with_every_number, "the sparklines never shrank to keep the numbers"
    table = render_compare.compare_table(compare_report, "verdict", None).table
    assert {str(c.header): c.width for c in table.columns}["log std"] == natural


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_check_reads_right(check_result, width):
    full = full_names(render_check.check_renderables(check_result, None))
    renderables = render_check.check_renderables(check_result, width)
    tables = [r for r in renderables if isinstance(r, Table)]
    assert tables
    assert_reads_right(renderables, width, tables, full)


@pytest.mark.slow
@pytest.mark.parametrize("width", (60, 80))
def test_histograms_merge_bins_to_fit(run_report, width):
    block = render.histogram_block(run_report.runs[0], width)
    for line in block[1:]:
        assert cell_len(line.plain) <= width, line.plain
        assert re.search(r"\[\S+, \S+\]$", line.plain), "the row's range is printed whole"


def test_merged_bins_keep_every_count():
    counts = tuple(range(40))
    assert render.merge_bins(counts, 40) == counts
    merged = render.merge_bins(counts, 25)
    assert len(merged) == 20 and sum(merged) == sum(counts)
    assert merged[0] == 0 + 1 and merged[-1] == 38 + 39
    assert sum(render.merge_bins(counts, 7)) == sum(counts)


def test_wrap_text_breaks_at_spaces_and_brackets():
    assert wrap_text("kaiming + general_relu(subtract=0.5)", 16) == \
        "kaiming +\ngeneral_relu(\nsubtract=0.5)"
    assert wrap_text("lsuv + relu (plain)", 16) == "lsuv + relu\n(plain)"  # never `relu (`
    assert wrap_text("default + relu (residual, layernorm)", 16) == \
        "default + relu\n(residual,\nlayernorm)"
    assert wrap_text("short", 16) == "short"
    assert wrap_text("abcdefghij", 4) == "abcd\nefgh\nij"


def test_wrap_text_breaks_a_module_path_after_a_dot_but_never_a_number():
    assert wrap_text("grad_vanishing @ blocks.0.branch.fc1", 16) == \
        "grad_vanishing @\nblocks.0.branch.\nfc1"
    assert wrap_text("general_relu(subtract=0.25)", 15) == "general_relu(\nsubtract=0.25)"
    assert wrap_text("post std 0.8532 → 1.329", 12) == "post std\n0.8532 → \n1.329".replace(
        " \n", "\n")


def test_columns_leave_in_rank_order_and_rank_zero_stays():
    cells = [Text("1.234e+05"), Text("2.345e+05"), Text("3.456e+05")]  # not the same in every row
    spec = [Column("a", cells), Column("b", cells, rank=1), Column("c", cells, rank=3),
            Column("d", cells, rank=2)]
    fitted = fit(spec, 9 * 3 + 2 * 2)
    assert [str(c.header) for c in fitted.table.columns] == ["a", "b", "d"]
    assert fitted.left_out == ("c",)
    assert fit(spec, 9 * 2 + 2).left_out == ("c", "d")
    assert fit(spec, 5).left_out == ("b", "c", "d")  # too narrow even for "a": it stays
    assert fit(spec, None).left_out == ()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLOUR = re.compile(r"\x1b\[(?:\d+;)*(?:3[0-8]|9[0-7])(?:;\d+)*m")  # a foreground colour


def in_terminal(args: list[str], width: int, env: dict[str, str] | None = None,
                stderr_too: bool = False) -> tuple[int, str]:
    """Run `python -m actstat ARGS` with stdout (and with `stderr_too` stderr) on a
    pseudo-terminal of `width` columns, as a user's shell runs it; the exit code and what the
    terminal received (escape codes kept)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, width, 0, 0))
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("COLUMNS", "NO_COLOR")}
    environment |= {"TERM": "xterm-256color", **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "actstat", *args], stdin=follower,
                               stdout=follower,
                               stderr=follower if stderr_too else subprocess.DEVNULL, env=environment,
                               close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = process.wait(timeout=300)
    os.close(leader)
    return code, b"".join(chunks).decode().replace("\r", "")


RUN = ["--depth", "20", "--width", "16", "--batch-size", "64", "--device", "cpu", "-q"]
needs_pty = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


@needs_pty
@pytest.mark.slow
@pytest.mark.parametrize("width", (80, 120))
def test_compare_in_a_real_terminal(width):
    code, raw = in_terminal(["compare", *RUN], width, {"NO_COLOR": "1"})
    shown = ANSI.sub("", raw)
    assert code == 0, shown
    assert "…" not in shown
    assert all(cell_len(line) <= width for line in shown.splitlines()
               if not line.startswith("left out")), shown
    assert "grad 1/L" in shown and "first flag" in shown
    assert ("left out to fit 80 columns" in shown) == (width == 80)


@needs_pty
@pytest.mark.slow
def test_wide_keeps_every_column_in_a_narrow_terminal():
    # --steps: the train loss column too
    code, raw = in_terminal(["compare", *RUN, "--wide", "--steps", "2"], 80, {"NO_COLOR": "1"})
    shown = ANSI.sub("", raw)
    assert code == 0, shown
    assert "left out" not in shown
    for name in render_compare.COMPARE_COLUMNS:
        assert name in shown


@needs_pty
@pytest.mark.slow
@pytest.mark.parametrize("how, coloured", [([], True), (["--no-color"], False),
                                           ("NO_COLOR", False)])
def test_colour_in_a_terminal_unless_asked_not_to(how, coloured):
    args = ["run", *RUN, "-i", "randn", "-a", "tanh"]
    env = {"NO_COLOR": "1"} if how == "NO_COLOR" else {}
    code, raw = in_terminal(args + (how if isinstance(how, list) else []), 120, env)
    assert code == 0, raw
    assert "saturated" in ANSI.sub("", raw)
    assert bool(COLOUR.search(raw)) == coloured


@needs_pty
@pytest.mark.slow
def test_no_color_reaches_the_progress_bar_too():
    args = ["compare", *[a for a in RUN if a != "-q"], "-i", "randn,kaiming", "-a", "relu,tanh"]
    code, raw = in_terminal(args, 120, stderr_too=True)
    assert code == 0, raw
    assert "measured" in ANSI.sub("", raw), "the progress bar ran on the terminal"
    assert COLOUR.search(raw)
    code, raw = in_terminal([*args, "--no-color"], 120, stderr_too=True)
    assert code == 0, raw
    assert "measured" in ANSI.sub("", raw)
    assert not COLOUR.search(raw)


def test_a_column_that_says_nothing_in_any_row_leaves_first():
    says = Column("units", [Text("100"), Text("100")], rank=9)
    nothing = Column("sat", [Text("—"), Text("—")], rank=1)
    kept = Column("layer", [Text("1"), Text("2")])
    fitted = fit([kept, nothing, says], 12)
    assert fitted.left_out == ("sat",)
    assert fit([kept, nothing, says], None).left_out == ()  # wide enough: nothing leaves


def test_a_column_that_reads_the_same_in_every_row_leaves_rather_than_a_name_wrap():
    name = Column("scheme", [Text("kaiming + relu → kaiming + tanh")] * 2, justify="left",
                  wrap=True, min_width=12)
    value = Column("obtained", [Text("0.7418"), Text("1.145")])
    tolerance = Column("tolerance", [Text("×1.05"), Text("×1.05")], rank=3)
    fitted = fit([name, value, tolerance], 45)
    assert fitted.left_out == ("tolerance (×1.05 in every row)",)
    # where the name fits whole beside it, or nothing would be gained, the column stays
    assert fit([name, value, tolerance], 60).left_out == ()
    assert fit([name, value, tolerance], 20).left_out == ("tolerance (×1.05 in every row)",)


def test_no_column_comes_back_to_wrap_a_name_that_a_constant_column_left_for():
    # README.md's compare of a CNN at 80 columns: `verdict` (healthy in every row) left so that
    # the scheme names fit whole; `gain`, gone before it, must not come back and wrap them again
    name = Column("scheme", [Text("nets.py:make_cnn + kaiming")] * 2, justify="left",
                  wrap=True, min_width=16)
    verdict = Column("verdict", [Text("healthy")] * 2, justify="left", rank=1)
    value = Column("obtained", [Text("0.7418"), Text("1.145")])
    gain = Column("gain", [Text("1.048"), Text("0.961")], rank=5)
    fitted = fit([name, verdict, value, gain], 40)  # name whole beside obtained, not with gain
    assert fitted.left_out == ("verdict (healthy in every row)", "gain")
    assert [c.width for c in fitted.table.columns] == [26, 8]
    # wide enough for the name and gain together: gain stays
    assert fit([name, verdict, value, gain], 45).left_out == ("verdict (healthy in every row)",)


def test_a_column_does_not_come_back_past_a_more_important_one_as_narrow():
    scheme = Column("scheme", [Text("kaiming + relu")], justify="left")
    gain = Column("gain", [Text("0.92871")], rank=6)  # a cell wider than dead's
    dead = Column("dead", [Text("20.0%")], rank=7)
    module = Column("module", [Text("x" * 40)], rank=8)
    fitted = fit([scheme, gain, dead, module], 14 + 2 + 6)  # dead would fit, gain would not
    assert fitted.left_out == ("gain", "dead", "module")
    # a wide column that stays out lets a narrower, less important one back
    names = Column("module", [Text("x" * 40)], rank=5)  # more important than gain, and wide
    assert fit([scheme, names, gain], 14 + 2 + 7).left_out == ("module",)


@pytest.mark.parametrize("width", [40, 60, 80])
def test_a_message_wraps_at_words_and_keeps_numbers_with_their_symbols(width):
    from actstat.layout import wrap_message

    line = ("kaiming + relu: healthy — post std 0.8738 → 0.9149 over 3 layers; grad std layer 1 "
            "/ layer 3 = 1.059; mean field: critical (χ₁ = 1.031); no flags")
    wrapped = wrap_message(line, width).split("\n")
    assert len(wrapped) > 1 and all(len(part) <= width for part in wrapped)
    assert all(part.startswith("  ") for part in wrapped[1:])  # continuations indented
    assert " ".join(part.strip() for part in wrapped) == line  # nothing lost or cut
    for whole in ("(χ₁ = 1.031)", "0.8738 → 0.9149", "3 layers", "layer 1 / layer 3 = 1.059"):
        assert any(whole in part for part in wrapped), whole
    assert wrap_message("short", width) == "short"


# ----------------------------------------------------------------------------------------------
# a sparkline with more points than cells keeps its curve's shape (every sparkline, compare's
# log std and log grad, train's std and loss over steps, is drawn by render.sparkline)

SHRUNK = (8, 10, 13, 20, 40)


def levels(line: str) -> list[int | None]:
    return [None if cell == " " else render.SPARK.index(cell) for cell in line]


def cell_of(index: int, points: int, cells: int) -> int:
    """The cell whose stretch of points holds point `index` (equal stretches, in order)."""
    return max(cell for cell in range(cells) if cell * points // cells <= index)


@pytest.mark.parametrize("cells", SHRUNK)
def test_a_shrunk_ramp_still_rises_from_bottom_to_top(cells):
    ramp = [10 ** (i / 40) for i in range(200)]  # log std rising steadily over 200 layers
    drawn = levels(render.sparkline(ramp, cells))
    assert len(drawn) == cells
    assert drawn == sorted(drawn) and (drawn[0], drawn[-1]) == (0, len(render.SPARK) - 1)


@pytest.mark.parametrize("cells", SHRUNK)
def test_a_rise_through_residual_blocks_still_rises(cells):
    """202 rows of residual blocks (a period of 4 rows: fc1, act1, fc2, act2, each at its own
    scale) on a steady rise: the shrunk row follows the rise, not which row of a block each
    cell happened to land on."""
    rows = [10 ** (i / 100 + 0.3 * (0.0, 1.0, 0.5, 0.8)[i % 4]) for i in range(202)]
    drawn = levels(render.sparkline(rows, cells))
    assert drawn == sorted(drawn), render.sparkline(rows, cells)
    # from the bottom to the top, within a block's own spread (the lowest and the highest
    # rows of all are one row of a block each)
    assert drawn[0] <= 1 and drawn[-1] >= len(render.SPARK) - 2


@pytest.mark.parametrize("cells", SHRUNK)
def test_identical_blocks_stay_flat(cells):
    """Every residual block alike (ReZero at init): one level all along at every width."""
    rows = [(0.86, 0.5, 0.86, 0.3)[i % 4] for i in range(202)]
    assert len(set(render.sparkline(rows, cells))) == 1, render.sparkline(rows, cells)


def test_a_block_row_that_sits_apart_is_the_pattern_not_a_dip():
    """Fixup + tanh's residual blocks: the stream, a branch row at half its std, a row of exact
    zeros (no value), 8 times. A third of the rows sit apart from the rest, in every block: no
    spike, so the row reads flat between the two, not as a dip in every cell."""
    rows = [0.7418, 0.38, 0.0] * 8 + [0.7418]
    drawn = levels(render.sparkline(rows, 8))
    assert len(set(drawn)) == 1 and 0 < drawn[0] < len(render.SPARK) - 1, drawn


@pytest.mark.parametrize("cells", SHRUNK)
@pytest.mark.parametrize("at", [0, 57, 131, 199])
def test_a_one_layer_spike_or_dip_keeps_its_height_and_place(cells, at):
    top, bottom = len(render.SPARK) - 1, 0
    for value, level in ((1e4, top), (1e-4, bottom)):  # an exploding layer, a dying one
        rows = [1.0 + 0.01 * (i % 3) for i in range(200)]
        rows[at] = value
        drawn = levels(render.sparkline(rows, cells))
        assert drawn.count(level) == 1, render.sparkline(rows, cells)
        assert drawn.index(level) == cell_of(at, len(rows), cells)


@pytest.mark.parametrize("cells", SHRUNK)
def test_a_peak_keeps_its_place(cells):
    rows = [10 ** (-abs(i - 130) / 30) for i in range(200)]
    drawn = levels(render.sparkline(rows, cells))
    peak = cell_of(130, 200, cells)
    assert drawn[peak] == max(drawn) >= len(render.SPARK) - 2, render.sparkline(rows, cells)
    assert drawn[:peak + 1] == sorted(drawn[:peak + 1])
    assert drawn[peak:] == sorted(drawn[peak:], reverse=True)
    assert drawn[0] <= 1  # the far end, 130 layers below the peak (the near one is 70 below)


def test_a_stretch_with_no_value_is_blank_and_one_with_any_is_drawn():
    rows = [1.0, None, 2.0, 0.0] * 10 + [None] * 40  # zero gradients, then none at all
    drawn = render.sparkline(rows, 10)
    assert drawn[5:] == " " * 5 and " " not in drawn[:5]


@pytest.mark.parametrize("width", (60, 80, 120))
def test_train_keeps_a_one_step_jump_at_every_width(width):
    """train's std over 200 recorded steps, through whatever cells the terminal leaves: the
    step where the std jumped stays the one tall bar, where it was."""
    from actstat.records import Run, Trajectory, TrajectoryLayer
    from actstat.render_watch import trajectory_table

    steps = 200
    std = [1.0 + 0.001 * (step % 5) for step in range(steps)]
    std[131] = 50.0
    layer = TrajectoryLayer(name="3", mean=(0.0,) * steps, std=tuple(std),
                            near_zero=(0.0,) * steps, dead=None, grad_std=(1.0,) * steps)
    trajectory = Trajectory(steps=tuple(range(steps)), loss=(2.3,) * steps, accuracy=None,
                            layers=(layer,), planned_steps=steps, every=1, batch_size=8,
                            optimizer="sgd", lr=0.1, momentum=0.0, warmup=0)
    run = Run(scheme="kaiming + relu", init="kaiming", init_params={}, act="relu",
              act_params={}, verdict="healthy", loss=None, layers=(), trajectory=trajectory)
    row = next(line for line in render.plain_text(trajectory_table(run, width), width)
               .splitlines() if line.startswith("3 "))
    drawn = re.search(f"[{render.SPARK}]+", row).group()
    assert len(drawn) < steps and drawn.count("█") == 1, row
    assert drawn.index("█") == cell_of(131, steps, len(drawn))
