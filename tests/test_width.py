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
from test_readme import EXAMPLES, PAGES

WIDTHS = (60, 80, 100, 160)
# escape sequences (colour, cursor movement of the progress bar) take no columns
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def shown_lines(output: bytes) -> list[str]:
    """The lines a terminal shows: escapes gone, each carriage return starting the line over."""
    text = ESCAPE.sub("", output.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


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
@pytest.mark.parametrize("width", WIDTHS)
def test_help_and_errors_fit_the_terminal(width, tmp_path):
    for args in (["run", "--help"], ["--help"], ["check", "--help"], ["train", "--help"],
                 ["run", "--act", "tanhh"], ["run", "--dept", "3"]):
        with Terminal(*args, columns=width, cwd=tmp_path) as terminal:
            terminal.finish(timeout=60)
        assert not too_long(terminal.output, width), (args, width)
