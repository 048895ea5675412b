"""Fit a table to a terminal's width: columns leave in a stated priority order; numbers are never cut.

Rich, given a table wider than the terminal, shrinks every column and cuts what no longer fits
with an ellipsis: `9.40e+06` becomes `9.40…`, a different number. Here the widths are decided
before Rich sees the table. Every column gets a fixed width: a number column its natural width
(no wrapping, ever); a text column (a scheme's name, flags) at least `min_width`, wrapping onto
more lines when it must; a sparkline column shrinks (render.shrunk: a cell per stretch), down to
`SPARK_MIN` cells. When even that does not fit, whole columns leave, least important first, and
the caller says which ones left (`left_out_note`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

WIDE = 16  # a column narrowest at more than this (a user's module names) may stay out alone
GAP = 2  # cells between two columns: one of padding, one of the (blank) divider
SPARK_MIN = 8  # a sparkline narrower than this no longer shows a trend


@dataclass(frozen=True)
class Column:
    """One column of a table to fit.

    `rank`: 0 never leaves; otherwise a higher rank leaves sooner. `wrap`: text that may break onto
    more lines (words, or folded inside a long name), never a number. `spark`: a function that
    draws the column's cells at a given width (sparklines), instead of fixed `cells`.
    """

    name: str
    cells: Sequence[Text] = ()
    justify: str = "right"
    rank: int = 0
    wrap: bool = False
    min_width: int = 0
    spark: Callable[[int], Sequence[Text]] | None = field(default=None, compare=False)
    spark_width: int = 0  # the sparkline's natural width (one cell per layer, capped)

    def natural(self) -> int:
        if self.spark is not None:
            return max(cell_len(self.name), self.spark_width)
        return max([cell_len(self.name), *(cell_len(cell.plain) for cell in self.cells)])

    def narrowest(self) -> int:
        """The fewest cells this column can take without cutting anything (its header may wrap
        between words, never inside one)."""
        word = max((cell_len(part) for part in self.name.split()), default=1)
        if self.spark is not None:
            return max(min(SPARK_MIN, self.spark_width), word, 1)
        if not self.wrap:
            return self.natural()
        return min(self.natural(), max(self.min_width, word, 1))


@dataclass(frozen=True)
class Fitted:
    """A table that fits, and the names of the columns that left to make it fit."""

    table: Table
    left_out: tuple[str, ...]


def _widths(columns: list[Column], width: int | None) -> dict[str, int] | None:
    """Each kept column's width, or None when these columns cannot fit in `width`."""
    natural = {c.name: c.natural() for c in columns}
    if width is None:
        return natural
    room = width - GAP * (len(columns) - 1)
    least = {c.name: c.narrowest() for c in columns}
    if sum(least.values()) > room:
        return None
    widths = dict(least)
    spare = room - sum(widths.values())
    # spare cells: first to text that then stops wrapping (the nearest first), then to the
    # sparklines (they shrank before any column left), then to any text still wrapping
    def grow(column: Column, whole: bool) -> None:
        nonlocal spare
        deficit = natural[column.name] - widths[column.name]
        if whole and deficit > spare:
            return
        widths[column.name] += min(deficit, spare)
        spare -= min(deficit, spare)

    texts = sorted((c for c in columns if c.spark is None),
                   key=lambda c: natural[c.name] - widths[c.name])
    for column in texts:
        grow(column, whole=True)
    for column in columns:
        if column.spark is not None:
            grow(column, whole=False)
    for column in texts:
        grow(column, whole=False)
    return widths


def wrap_text(text: str, width: int) -> str:
    """`text` broken into lines of at most `width` cells, after a space, a '(' or a ',' where
    possible (`kaiming + general_relu(` / `subtract=0.5)`; a '(' after a space opens the next
    line: `lsuv + relu` / `(plain)`), or after a '.' that follows a letter (a module path:
    `blocks.0.branch.` / `fc1`; never inside a number such as 0.5), folding only a longer
    word."""
    lines: list[str] = []
    line = ""
    for token in re.findall(r"\(?(?:[^ (,.]|(?<![A-Za-z_])\.)*(?:[ ,]+|\(|(?<=[A-Za-z_])\.)?",
                            text):
        if not token:
            continue
        if line and cell_len((line + token).rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        while cell_len(token.rstrip()) > width:  # a word longer than the column: fold it
            lines.append(token[:width])
            token = token[width:]
        line += token
    lines.append(line.rstrip())
    return "\n".join(lines)


def _wrapped(cells: Sequence[Text], width: int) -> list[Text]:
    out = []
    for cell in cells:
        if cell_len(cell.plain) <= width or cell.spans:  # styled spans: leave it to Rich
            out.append(cell)
        else:
            out.append(Text(wrap_text(cell.plain, width), style=cell.style))
    return out


NOTHING = ("", "—", "-")  # a cell that says nothing (symbols.py writes `—` as `-`)


def _constant(column: Column) -> bool:
    """A column of more than one row that reads the same in every row (and says something)."""
    return (column.rank > 0 and column.spark is None and len(column.cells) > 1
            and len({cell.plain.strip() for cell in column.cells}) == 1
            and not _says_nothing(column))


def _says_nothing(column: Column) -> bool:
    return column.spark is None and bool(column.cells) and all(
        cell.plain.strip() in NOTHING for cell in column.cells)


def fit(columns: Sequence[Column], width: int | None, *, title: str | None = None,
        styles: Sequence[str] = ()) -> Fitted:
    """The table of `columns` in at most `width` cells (None: every column at full width).

    Columns that say nothing in any row leave first, then those with the highest rank (ties:
    the rightmost first) until the rest fit;
    the rank-0 columns stay even when they do not fit (a terminal narrower than them wraps).
    `styles`: one row style per row (may be empty).
    """
    kept = list(columns)
    widths = _widths(kept, width)
    while widths is None:
        # a column that says nothing in any row (`—` throughout) leaves before any that does
        leaving = max((c for c in kept if c.rank > 0),
                      key=lambda c: (_says_nothing(c), c.rank, kept.index(c)), default=None)
        if leaving is None:
            widths = {c.name: c.narrowest() for c in kept}
            break
        kept.remove(leaving)
        widths = _widths(kept, width)
    # a column that reads the same in every row (check's tolerance) leaves rather than a name
    # wrap onto more lines; the note then gives its one value
    constants: list[Column] = []
    if widths is not None and width is not None:
        for column in [c for c in kept if _constant(c)]:
            wrapped = [c for c in kept if c.wrap and widths[c.name] < c.natural()]
            trial = [c for c in kept if c is not column]
            trial_widths = _widths(trial, width) if wrapped else None
            if trial_widths is not None and any(trial_widths[c.name] >= c.natural()
                                                for c in wrapped):
                kept, widths = trial, trial_widths
                constants.append(column)
    # the names a constant column left for stay whole: nothing comes back to wrap them again
    whole = [c for c in kept if c.wrap and widths is not None and widths[c.name] >= c.natural()
             ] if constants else []
    # a wide column leaving (a user's long module names) can make room for narrower ones that
    # left before it: they come back, the most important (lowest rank) first
    # (past a wide column that stays out, never past a narrow one: the stated order holds)
    for column in sorted((c for c in columns if all(c is not k for k in (*kept, *constants))),
                         key=lambda c: c.rank):
        trial = [c for c in columns if c is column or any(c is k for k in kept)]
        trial_widths = _widths(trial, width) if widths is not None else None
        if trial_widths is not None and all(trial_widths[c.name] >= c.natural() for c in whole):
            kept, widths = trial, trial_widths
        elif column.narrowest() <= WIDE:
            break
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 1, 0, 0), collapse_padding=False)
    cells: list[Sequence[Text]] = []
    for column in kept:
        size = widths[column.name]
        header = column.name if cell_len(column.name) <= size else Text(
            wrap_text(column.name, size))  # between words: `grad std` / `over steps`
        table.add_column(header, justify=column.justify, width=size, no_wrap=not column.wrap,
                         overflow="fold")
        if column.spark is not None:
            cells.append(column.spark(size))
        else:
            cells.append(_wrapped(column.cells, size) if column.wrap else column.cells)
    for index, row in enumerate(zip(*cells)):
        table.add_row(*row, style=styles[index] if index < len(styles) else None)
    left_out = tuple(f"{c.name} ({c.cells[0].plain.strip()} in every row)"
                     if _constant(c) else c.name
                     for c in columns if c not in kept)
    return Fitted(table, left_out)


def left_out_note(left_out: Sequence[str], width: int | None) -> Text | None:
    """One dim line under a table that lost columns: which, and how to see them all."""
    if not left_out:
        return None
    return Text(f"left out to fit {width} columns: {', '.join(left_out)}; "
                "all columns: --wide, or -f markdown / -f json", style="dim")


# a symbol between two words binds them: `χ₁ = 0.9801`, `0.8738 → 0.7608`, `(×0.8489;` stay on
# one line, so that a wrapped line never starts with `=` or `→`
_GLUE = re.compile(r" (=|→|->|×|/|<|>|≤|≥) ")
_NBSP = "\u00a0"
# `layer 1`, `step 30`, `3 layers`, `2 values` stay whole
_NAMED = re.compile(r"\b(layers?|steps?) (?=[\w.-]*\d)|(?<=\d) (?=(?:layers?|steps?|values?)\b)")


def wrap_message(text: str, width: int) -> str:
    """`text` wrapped to `width` columns at word boundaries, as actstat wraps what it prints to a
    terminal (the terminal would break a line inside a number or a name): a number or name is
    never split (one longer than the line stands on its own), each continuation is indented two
    spaces more than its line, and the lines that fit are left as they are."""
    import textwrap

    lines = []
    for line in text.split("\n"):
        if cell_len(line) <= width:
            lines.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip(" "))]
        glued = _GLUE.sub(lambda m: f"{_NBSP}{m.group(1)}{_NBSP}", line.strip(" "))
        glued = _NAMED.sub(lambda m: f"{m.group(1) or ''}{_NBSP}", glued)
        wrapped = textwrap.wrap(glued, width=max(width, 20), initial_indent=indent,
                                subsequent_indent=indent + "  ", break_long_words=False,
                                break_on_hyphens=False)
        lines += [part.replace(_NBSP, " ") for part in wrapped] or [line]
    return "\n".join(lines)
