"""The README stays true: CI runs its test command, it documents every name, its examples run."""

from __future__ import annotations

import re
import shlex

import pytest

from actstat.activations import ACTIVATIONS
from actstat.cli import app
from actstat.inits import BIAS_INITS, INITS
from actstat.render import FORMATS
from actstat.report import FLAGS
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert command.startswith("pip install -e '.[test]'")
    quick_start = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line for line in quick_start.strip().splitlines()]
    assert len(lines) == 2, "the README opens with exactly two set-up commands"
    assert lines[1] == command
    assert "actstat run" in lines[0]


@pytest.mark.parametrize("name", [*INITS, *ACTIVATIONS, *BIAS_INITS, *FLAGS, *FORMATS])
def test_every_name_is_documented(name):
    assert f"`{name}`" in README


def test_exit_codes_are_documented():
    section = README.split("## Exit codes", 1)[1].split("##", 1)[0]
    for code in ("0", "1", "2"):
        assert f"| {code} |" in section


EXAMPLES = re.findall(r"```console\n\$ (actstat [^\n]*)\n(.*?)```", README, flags=re.S)


def test_the_readme_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """One directory for all the README's examples, run in order: later ones (check) read what
    earlier ones (baseline) wrote, as a reader following the README would."""
    directory = tmp_path_factory.mktemp("readme")
    (directory / "configs").symlink_to(ROOT / "configs")
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("command, shown", EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_examples_print_what_the_readme_shows(command, shown, readme_dir, monkeypatch,
                                                     request):
    from typer.testing import CliRunner

    monkeypatch.chdir(readme_dir)
    args = shlex.split(command.split("#")[0])[1:]
    expected_code = 1 if "# exit 1" in command else 0
    result = CliRunner().invoke(app, args, env={"NO_COLOR": "1"})
    assert result.exit_code == expected_code, result.stderr
    printed = result.stdout + result.stderr
    if request.config.getoption("--update-golden"):
        path = ROOT / "README.md"
        text = path.read_text(encoding="utf-8")
        old = f"```console\n$ {command}\n{shown}```"
        assert old in text
        path.write_text(text.replace(old, f"```console\n$ {command}\n{printed.rstrip()}\n```"),
                        encoding="utf-8")
        return
    assert printed.rstrip("\n") == shown.rstrip("\n"), (
        "the README's example output is stale: run pytest --update-golden and review the diff")
