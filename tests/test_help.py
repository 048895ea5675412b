"""--help reads right: every help text whole (no markup eats brackets), no value placeholder on
flags, shell completion offered."""

from __future__ import annotations

import re

import pytest
import typer.main

from actstat.cli import app

COMMAND = typer.main.get_command(app)
SUBCOMMANDS = list(COMMAND.commands)  # type: ignore[attr-defined]
COMMANDS = ["", *SUBCOMMANDS]


def flat(text: str) -> str:
    """Help output without panel borders, whitespace collapsed: wrapped lines read as one."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def params(name: str):
    command = COMMAND.commands[name] if name else COMMAND  # type: ignore[attr-defined]
    return command.params


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_text_shows_whole(cli, name):
    shown = flat(cli(*([name] if name else []), "--help").stdout)
    checked = 0
    for param in params(name):
        if not getattr(param, "help", None):
            continue
        # what the reader must see: Rich escapes (\[) are the only markup in our help texts
        intended = " ".join(param.help.replace("\\[", "[").split()).rstrip(".")
        assert intended in shown, f"{name} --help lost part of: {intended!r}"
        checked += 1
    assert checked


@pytest.mark.parametrize("name", COMMANDS)
def test_flags_show_no_value_placeholder(cli, name):
    shown = cli(*([name] if name else []), "--help").stdout
    assert "<bool>" not in shown
    assert "--help" in shown


def test_brackets_survive(cli):
    assert "actstat[plot]" in flat(cli("run", "--help").stdout)
    assert "[s/F, s*F]" in flat(cli("check", "--help").stdout)


def test_shell_completion_is_offered(cli):
    shown = cli("--help").stdout
    assert "--install-completion" in shown and "--show-completion" in shown


@pytest.mark.parametrize("words, cword, expected", [("actstat ru", 1, "run"),
                                                    ("actstat compare --so", 2, "--sort"),
                                                    ("actstat check --stor", 2, "--stored-config")])
def test_completion_answers_the_shell(words, cword, expected):
    """What a bash script installed by an earlier actstat asks (Typer's: COMP_WORDS and
    COMP_CWORD) is still answered; today's script sends the line (tests/test_completion.py)."""
    from typer.testing import CliRunner

    done = CliRunner().invoke(app, [], prog_name="actstat", env={
        "_ACTSTAT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert done.exit_code == 0, done.output
    assert done.stdout.split() == [expected]


@pytest.mark.parametrize("columns", [60, 80, 100])
@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_the_terminal_and_reads_as_paragraphs(cli, name, columns):
    shown = cli(*([name] if name else []), "--help", env={"COLUMNS": str(columns)}).stdout
    assert max(len(line) for line in shown.splitlines()) <= columns
    command = COMMAND.commands[name] if name else COMMAND  # type: ignore[attr-defined]
    # a docstring's paragraph is one paragraph on screen, not broken where the source broke it
    first = " ".join(command.help.split("\n\n")[0].split())
    assert first in flat(shown)


def test_run_help_is_short_and_grouped(cli):
    shown = cli("run", "--help", env={"COLUMNS": "80"}).stdout
    assert len(shown.splitlines()) <= 90  # Typer drew 141 (with the hf: options)
    for panel in ("Model", "Data", "Measure", "Output", "CI"):
        assert f"─ {panel} ─" in shown


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_stands_in_a_named_panel(cli, name):
    """No command's options fall into a catch-all 'Options' panel (coord-check's did)."""
    loose = [param.opts[0] for param in params(name) if param.param_type_name == "option"
             and not getattr(param, "rich_help_panel", None)]
    assert loose == [], f"{name}: options without a help panel: {loose}"
    shown = cli(name, "--help", env={"COLUMNS": "80"}).stdout
    assert "─ Options ─" not in shown


def test_coord_check_help_groups_its_options(cli):
    shown = cli("coord-check", "--help", env={"COLUMNS": "80"}).stdout
    panels = re.findall(r"╭─ (\w+) ─", shown)
    assert panels == ["Arguments", "Model", "Data", "Widths", "Training", "Output", "CI"]
    grouped = {param.name: param.rich_help_panel for param in params("coord-check")
               if param.param_type_name == "option" and param.name != "help"}
    assert {name for name, panel in grouped.items() if panel == "Widths"} == {
        "widths", "seeds", "param", "base_width", "width_arg"}
    assert {name for name, panel in grouped.items() if panel == "CI"} == {"max_slope", "fail_on"}


@pytest.mark.parametrize("name", COMMANDS)
def test_usage_names_arguments_as_words(cli, name):
    """`actstat plot [OPTIONS] REPORT`, not Typer's `{report}`, which reads as text to type."""
    usage = next(line for line in cli(*([name] if name else []), "--help").stdout.splitlines()
                 if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage


def test_help_shows_the_defaults_the_config_has():
    from actstat.config import COORD_CHECK_DEPTH, Config

    config = Config()
    shown = {param.name: " ".join(param.help.split()) for param in params("run") if param.help}
    coord = {param.name: " ".join(param.help.split()) for param in params("coord-check")
             if param.help}
    assert f"(default {COORD_CHECK_DEPTH} in a coord check)" in coord["depth"]
    assert f"(default {','.join(map(str, config.coord_check.widths))})" in coord["widths"]
    assert f"(default {config.coord_check.steps})" in coord["coord_steps"]
    assert f"(default {config.coord_check.seeds})" in coord["seeds"]
    assert f"{config.coord_check.optimizer} (default)" in coord["coord_optimizer"]
    assert f"{config.coord_check.param} (" in coord["param"] and "default" in coord["param"]
    assert f"(default {config.model.depth})" in shown["depth"]
    assert f"(default {config.model.width})" in shown["width"]
    assert f"(default {config.data.batch_size})" in shown["batch_size"]
    assert f"(default {config.seed})" in shown["seed"]
    assert f"{config.data.source} (default" in shown["data"]
    assert f"{config.dtype} (default)" in shown["dtype"]


def test_every_data_source_is_listed(cli):
    from actstat.config import DATA_SOURCES

    shown = {param.name: param.help for param in params("run") if param.help}
    assert all(source in shown["data"] for source in DATA_SOURCES)


KNOWN_FORMATS = ("table", "json", "csv", "markdown", "html", "junit")
# options that make each command stop with a usage error right after it has read --format
AFTER_FORMAT = {"check": ["--max-drift", "2", "--seed", "x"]}


def accepts(cli, name: str, format: str) -> bool:
    """Whether `name` takes `-f format`: the command refuses an unknown format first, so a
    bad --seed after a format it takes is the error it stops at."""
    result = cli(name, "-f", format, *AFTER_FORMAT.get(name, ["--seed", "x"]), code=2)
    return not result.stderr.startswith("actstat: error: --format")


@pytest.mark.parametrize("name", [name for name in SUBCOMMANDS
                                  if any(param.name == "format" for param in params(name))])
def test_each_command_lists_and_completes_the_formats_it_accepts(cli, name):
    from test_completion import offered

    accepted = {format for format in KNOWN_FORMATS if accepts(cli, name, format)}
    text = next(param.help for param in params(name) if param.name == "format")
    listed = set(text.replace(" or ", ", ").rstrip(".").split(" (")[0].split(", "))
    assert listed == accepted, (name, text)
    assert set(offered(f"actstat {name} -f ")) == accepted


def test_top_level_help_does_not_say_mlp_only(cli):
    assert "of an MLP" not in flat(cli("--help").stdout)
