"""`--help` as Rich renderables that fit the terminal: paragraphs reflowed (no hard line breaks
from a docstring), options in panels (Model, Data, ...), each option's names beside its help
where the terminal is wide enough and above it where it is not. Torch-free; prints nothing.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

OPTIONS_PANEL = "Options"
NAMES_MAX = 30  # widest names column beside the help; longer names get a line of their own
HELP_MIN = 36  # narrowest help column beside the names; narrower, the help goes below them


def paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs, each one line: the terminal (Rich) wraps them, not the source."""
    return [" ".join(block.split()) for block in text.strip().split("\n\n") if block.strip()]


def option_names(param: Any) -> str:
    """`-i, --init NAME[,NAME...]`, `--bias / --no-bias`, `CONFIG`."""
    if param.param_type_name == "argument":
        return (param.metavar or param.name).upper()
    opts = sorted(param.opts, key=lambda name: (name.startswith("--"), name))
    names = ", ".join(opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if not param.is_flag and param.metavar:
        names += f" {param.metavar}"
    elif not param.is_flag:
        names += " FILE"  # the options declared without a metavar are paths
    return names


def option_help(param: Any) -> Text:
    """The option's help (Rich markup: `\\[` is a bracket) and its default where it shows one."""
    text = Text.from_markup(" ".join((getattr(param, "help", None) or "").split()))
    default = param.default
    if getattr(param, "show_default", True) and not getattr(param, "is_flag", False) \
            and default not in (None, "", (), []) and param.param_type_name == "option":
        period = text.plain.endswith(".")
        text.right_crop(1 if period else 0)
        text.append(f" (default {default})" + ("." if period else ""))
    return text


def panel_of(param: Any) -> str:
    if param.param_type_name == "argument":
        return "Arguments"
    return getattr(param, "rich_help_panel", None) or OPTIONS_PANEL


def rows_table(rows: list[tuple[str, Text]], width: int, widest: int | None = None) -> Any:
    """Names beside their help (names of at most NAMES_MAX; `widest`: the same column in every
    panel), or each help below its names."""
    names_width = min(widest or max((len(names) for names, _ in rows), default=0), NAMES_MAX)
    inside = width - 4  # a panel's border and padding
    if inside - names_width - 2 >= HELP_MIN:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(width=names_width, no_wrap=True)
        grid.add_column(ratio=1)
        for names, help_text in rows:
            if len(names) > names_width:
                grid.add_row(Text(names, style="bold cyan"), "")
                grid.add_row("", help_text)
            else:
                grid.add_row(Text(names, style="bold cyan"), help_text)
        return grid
    return Group(*(part for names, help_text in rows
                   for part in (Text(names, style="bold cyan"), Padding(help_text, (0, 0, 0, 4)))))


def help_renderables(command: Any, ctx: Any, width: int) -> list[Any]:
    """What `command --help` prints, fitted to `width` columns."""
    shown: list[Any] = [Padding(Text(command.get_usage(ctx)), (1, 0, 1, 1))]
    for paragraph in paragraphs(command.help or ""):
        shown.append(Padding(Text.from_markup(paragraph), (0, 1, 1, 1)))
    panels: dict[str, list[tuple[str, Text]]] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        panels.setdefault(panel_of(param), []).append((option_names(param), option_help(param)))
    order = sorted(panels, key=lambda name: (name != "Arguments", name == OPTIONS_PANEL))
    if order[-1] == OPTIONS_PANEL and len(panels[OPTIONS_PANEL]) == 1 and len(order) > 1:
        panels[order[-2]] += panels.pop(OPTIONS_PANEL)  # --help alone: no panel of its own
        order.pop()
    names_width = max(len(names) for rows in panels.values() for names, _ in rows)
    for name in order:
        shown.append(Panel(rows_table(panels[name], width, names_width), title=name,
                           title_align="left", border_style="dim"))
    commands = getattr(command, "commands", None)
    if commands:
        rows = [(name, Text(paragraphs(sub.help or "")[0] if sub.help else ""))
                for name, sub in commands.items() if not sub.hidden]
        shown.append(Panel(rows_table(rows, width), title="Commands", title_align="left",
                           border_style="dim"))
    return shown
