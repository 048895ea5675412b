"""A crash is not a regression: an unexpected exception exits 3 with one line, never 1."""

from __future__ import annotations

import pytest

from conftest import SMALL


@pytest.fixture
def broken_pipeline(monkeypatch):
    import actstat.pipeline

    def crash(*args, **kwargs):
        raise RuntimeError("simulated bug\nsecond line of the message")

    monkeypatch.setattr(actstat.pipeline, "profile", crash)


@pytest.mark.parametrize("command", [["run"], ["compare"], ["baseline", "-o", "{tmp}/b.json"],
                                     ["check", "--max-drift", "10"]])
def test_an_unexpected_exception_exits_3_with_one_line(cli, tmp_path, broken_pipeline, command):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = cli(*args, *SMALL, code=3)
    assert result.stderr.splitlines() == [
        "actstat: internal error: RuntimeError: simulated bug (run again with --debug for the "
        "traceback)"]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_shows_the_traceback(cli, broken_pipeline, how):
    args, env = (["--debug"], {}) if how == "option" else ([], {"ACTSTAT_DEBUG": "1"})
    result = cli(*args, "run", *SMALL, code=3, env=env)
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "in crash" in result.stderr and "second line of the message" in result.stderr
    assert result.stderr.splitlines()[-1] == "actstat: internal error: RuntimeError: simulated bug"


def test_debug_off_by_default_and_with_zero(cli, broken_pipeline):
    result = cli("run", *SMALL, code=3, env={"ACTSTAT_DEBUG": "0"})
    assert "Traceback" not in result.stderr


def test_a_crash_in_a_torch_free_command_exits_3(cli, tmp_path, monkeypatch):
    import actstat.plot

    def crash(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(actstat.plot, "series", crash)
    report = tmp_path / "r.json"
    cli("run", *SMALL, "-f", "json", "-o", str(report))
    result = cli("plot", str(report), "-o", str(tmp_path / "f.png"), code=3)
    assert result.stderr.splitlines() == [
        "actstat: internal error: ZeroDivisionError: division by zero (run again with --debug "
        "for the traceback)"]
    assert not (tmp_path / "f.png").exists()
