"""Shared fixtures: a CLI runner that checks exit codes, and golden files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from actstat.cli import app

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
# small runs keep the suite fast; numbers are checked on real depth elsewhere
SMALL = ["--depth", "3", "--width", "16", "--batch-size", "64", "--device", "cpu"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture(params=["fused", "torch"])
def reductions(request, monkeypatch):
    """Both ways a float32 CPU tensor is reduced: actstat/fused.py's C kernel (built at install
    where a C compiler exists; skipped where not) and the torch reductions that serve without it
    (and on a GPU, in half precision and float64). The value: "fused" or "torch"."""
    import actstat.fused

    if request.param == "fused" and not actstat.fused.AVAILABLE:
        pytest.skip("actstat._kernels was not built (no C compiler at install)")
    monkeypatch.setattr(actstat.fused, "ENABLED", request.param == "fused")
    return request.param


@pytest.fixture
def cli():
    """cli(*args, code=0) -> result; asserts the exit code, showing the output when it differs."""
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, env: dict | None = None):
        result = runner.invoke(app, list(args), env={"NO_COLOR": None, **(env or {})})
        assert result.exit_code == code, (
            f"exit {result.exit_code} != {code}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}\nexception: {result.exception!r}"
        )
        return result

    return invoke


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """golden(name, text): compare with tests/golden/name, or rewrite it with --update-golden."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"{path} is missing: run pytest --update-golden once and review it"
        assert text == path.read_text(encoding="utf-8"), (
            f"{name} differs from the golden file; if the change is intended, run "
            "pytest --update-golden and review the diff"
        )

    return check


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # results must not depend on the developer's terminal
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("NO_COLOR", "1") if os.environ.get("CI_FORCE_NO_COLOR") else None
