"""--help reads right: every help text whole (no markup eats brackets), no value placeholder on
flags, shell completion offered."""

from __future__ import annotations

import re

import pytest
import typer.main

from actstat.cli import app

COMMAND = typer.main.get_command(app)
COMMANDS = ["", *COMMAND.commands]  # type: ignore[attr-defined]


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
        intended = " ".join(param.help.replace("\\[", "[").split())
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
    """What bash's completion function asks (the script --show-completion prints sets these)."""
    from typer.testing import CliRunner

    done = CliRunner().invoke(app, [], prog_name="actstat", env={
        "_ACTSTAT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert done.exit_code == 0, done.output
    assert done.stdout.split() == [expected]
