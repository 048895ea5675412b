"""Everything actstat prints fits the terminal it is printed in: every example of the README and
docs/, run on a real pseudo-terminal 60, 80, 100 and 160 columns wide, prints no line longer
than the terminal (so the terminal breaks nothing, inside a number or a name)."""

from __future__ import annotations

import re
import shlex
import shutil
import sys

import pytest
from rich.cells import cell_len

from conftest import ROOT
from terminal import Terminal
from test_readme import EXAMPLES, PAGES, _run, differences

WIDTHS = (60, 80, 100, 160)
# escape sequences (colour, cursor movement of the progress bar) take no columns
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def shown_lines(output: bytes) -> list[str]:
    """The lines a terminal shows: escapes gone, each carriage return starting the line over."""
    text = ESCAPE.sub("", output.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


CONTROL = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|(\r?\n)|(\r)|([^\x1b\r\n]+)")


def screen(output: bytes) -> str:
    """What a terminal shows once `output` is written: each line as it is left, after carriage
    returns, cursor moves up (ESC [n A) and erased lines (ESC [2K, ESC [K), as a transient
    progress bar uses them to go; colour and other escapes take no room."""
    lines, row, col = [""], 0, 0
    for match in CONTROL.finditer(output.decode("utf-8", errors="replace")):
        params, code, newline, carriage, text = match.groups()
        if newline:
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif carriage:
            col = 0
        elif text:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + text + line[col + len(text):]
            col += len(text)
        elif code == "A":
            row = max(row - int(params or 1), 0)
        elif code == "K":
            lines[row] = "" if params == "2" else lines[row][:col]
    return "\n".join(line.rstrip() for line in lines).strip()


def test_the_screen_is_left_as_a_terminal_leaves_it():
    bar = b"\x1b[?25l\r\x1b[2Kmeasuring 0/1\r\x1b[2Kmeasured 1/1\r\n\x1b[?25h\r\x1b[1A\x1b[2K"
    assert screen(bar + b"\x1b[3mtable\x1b[0m\r\nrow 1\r\n") == "table\nrow 1"
    assert screen(b"abcdef\rxy\r\n") == "xycdef"


def too_long(output: bytes, width: int) -> list[str]:
    return [line for line in shown_lines(output) if cell_len(line) > width]


def test_the_check_sees_a_long_line():
    assert too_long(b"\x1b[1mabc\x1b[0m\r\nabcdef\r\n", 5) == ["abcdef"]
    assert too_long(b"measuring 1/2\rmeasured\r\n", 8) == []


PAGE_EXAMPLES = {page: [command for p, command, _ in EXAMPLES if p == page] for page in PAGES}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", [page for page in PAGES if PAGE_EXAMPLES[page]],
                         ids=lambda page: page.name)
def test_every_example_fits_the_terminal(page, width, tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for command in PAGE_EXAMPLES[page]:
        args = shlex.split(command.split("#")[0])[1:]
        with Terminal(*args, columns=width, cwd=tmp_path, env={"NO_COLOR": None}) as terminal:
            terminal.finish(timeout=900)  # depth100 --steps 100 on a busy machine
        long = too_long(terminal.output, width)
        assert not long, f"{page.name}: `{command}` at {width} columns:\n" + "\n".join(long)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_the_docs_check_shows_what_an_80_column_terminal_shows(tmp_path, monkeypatch):
    """The pages' outputs come from the CLI run in-process with every stream answering "a terminal
    80 columns wide" (test_readme._run); a real one shows the same: the table fitted and its
    note, the verdict and the --fail-on message wrapped, stdout and stderr in that order, the
    progress bar gone."""
    command = "actstat run --init randn --act tanh --depth 4 --fail-on saturated"
    with Terminal(*shlex.split(command)[1:], columns=80, cwd=tmp_path,
                  env={"NO_COLOR": "1"}) as terminal:
        assert terminal.finish(timeout=300) == 1
    on_terminal = screen(terminal.output)
    assert "left out to fit 80 columns" in on_terminal  # the table was fitted, not full width
    monkeypatch.chdir(tmp_path)
    assert differences(on_terminal, _run(f"{command}    # exit 1")) == []


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
@pytest.mark.parametrize("width", WIDTHS)
def test_help_and_errors_fit_the_terminal(width, tmp_path):
    for args in (["run", "--help"], ["--help"], ["check", "--help"], ["train", "--help"],
                 ["run", "--act", "tanhh"], ["run", "--dept", "3"]):
        with Terminal(*args, columns=width, cwd=tmp_path) as terminal:
            terminal.finish(timeout=60)
        assert not too_long(terminal.output, width), (args, width)
