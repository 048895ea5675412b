"""`actstat coord-check` at the command line: its table at every width, JSON, --fail-on, the plot
redrawn without torch, and a user's mistakes as one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from rich.text import Text

from actstat.records import (
    WIDTH_STABLE,
    CoordCheck,
    CoordLayer,
    InputStats,
    Report,
)
from actstat.render import plain_text
from actstat.render_coord import coord_tables, verdict_line

# small and quick; the figures themselves are tests/test_coordcheck.py's
QUICK = ["--device", "cpu", "--widths", "32,64,128", "--steps", "2", "--seeds", "2",
         "--train-batch", "128", "-q"]
MODEL = textwrap.dedent("""
    from torch import nn

    def make(d_model=16, classes=10):
        if d_model > 128:
            raise ValueError(f"d_model {d_model} does not fit the heads")
        return nn.Sequential(nn.Linear(784, d_model), nn.ReLU(), nn.Linear(d_model, classes))
""")


def hand_made(verdict: str = "grows_with_width") -> Report:
    """A coord check's Report made by hand (rendering, not BLAS rounding)."""
    sizes = tuple(tuple((0.5 * w, 0.5 * w * (1 + s)) for s in range(5)) for w in (1, 2, 4))
    flat = tuple(tuple((0.25, 0.25) for _ in range(5)) for _ in range(3))
    grows = verdict != WIDTH_STABLE
    layers = (
        CoordLayer("1", flat, (0.0, 0.01, -0.02, 0.03, -0.04), (0.01,) * 5, (), None),
        CoordLayer("2", flat, (0.0, 0.05, 0.1, 0.12, 0.15), (0.02,) * 5, (), None),
        CoordLayer("head", sizes if grows else flat,
                   (0.0, 1.18, 1.05, 0.83, 0.53) if grows else (0.0,) * 5, (0.1,) * 5,
                   ("grows_with_width",) if grows else (), 1 if grows else None),
    )
    check = CoordCheck(param="sp", optimizer="adam", lr=0.01, base_width=None,
                       widths=(64, 128, 256), steps=(0, 1, 2, 3, 4), seeds=(0, 1),
                       batch_size=256, threshold=0.3, layers=layers,
                       loss=tuple(tuple((2.3, 2.3) for _ in range(5)) for _ in range(3)),
                       verdict=verdict)
    return Report(schema_version=4, actstat_version="0.1.0", torch_version="2.13.0",
                  device="cpu", config={}, runs=(), coord_check=check,
                  input=InputStats("mnist", 5000, 784, True, 0.0, 1.0, shape=(784,)))


@pytest.mark.parametrize("width", [80, 100, 120, 160])
def test_the_table_and_picture_fit_the_terminal_and_keep_every_number_whole(width):
    text = plain_text(coord_tables(hand_made(), width), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines[:-1]), text  # (the verdict line wraps)
    for number in ("+1.18", "+1.05", "+0.83", "+0.53", "-0.04", "+0.15"):
        assert number in text
    assert "…" not in text
    assert "grows_with_width" in text
    assert "×4 ┤" in text  # head: in proportion to the width, 64 to 256


def test_the_verdict_names_the_worst_layer_its_slope_and_what_to_do():
    line = verdict_line(hand_made().coord_check)
    assert line.startswith("verdict: grows_with_width: head goes as width^1.18 at step 1")
    assert "--param mup" in line
    stable = verdict_line(hand_made(WIDTH_STABLE).coord_check)
    assert stable == "verdict: width-stable (every slope within ±0.3; the largest 0.15)"


@pytest.mark.slow
def test_sp_fails_on_grows_with_width_and_mup_passes(cli, tmp_path):
    out = tmp_path / "sp.json"
    result = cli("coord-check", *QUICK, "--fail-on", "grows_with_width", "-f", "json", "-o",
                 str(out), code=1)
    report = json.loads(out.read_text())
    head = report["coord_check"]["layers"][-1]
    assert head["name"] == "head" and "grows_with_width" in head["flags"]
    assert report["runs"] == [] and report["coord_check"]["widths"] == [32, 64, 128]
    cli("coord-check", *QUICK, "--param", "mup", "--fail-on", "grows_with_width")
    assert result.stdout == ""


@pytest.mark.slow
def test_the_table_at_80_columns(cli):
    result = cli("coord-check", *QUICK, env={"COLUMNS": "80"})
    assert "slope of ln mean|x| vs ln width (3 widths, 32–128): SP" in result.stdout
    assert "head" in result.stdout and "verdict: grows_with_width" in result.stdout


@pytest.mark.slow
def test_a_factory_with_its_width_argument(cli, tmp_path):
    (tmp_path / "nets.py").write_text(MODEL)
    model = f"{tmp_path / 'nets.py'}:make"
    result = cli("coord-check", *QUICK, "--model", model, "--width-arg", "d_model",
                 "-f", "json")
    check = json.loads(result.stdout)["coord_check"]
    assert check["param"] == "own" and [layer["name"] for layer in check["layers"]] == ["0", "2"]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["--widths", "64,128"], "at least three different widths"),
    (["--widths", "64,128,x"], "coord_check.widths"),
    (["--model", "{nets}:make", "--width-arg", "d_modle"],
     "takes no keyword argument 'd_modle' (did you mean 'd_model'?)"),
    (["--model", "{nets}:make"], "needs --width-arg NAME"),
    (["--model", "{nets}:make", "--width-arg", "d_model", "--param", "mup"],
     "--param mup applies μP to the built-in MLP"),
    (["--model", "{nets}:make", "--width-arg", "d_model", "--widths", "32,64,128,256"],
     "width 256: model factory"),
    (["--width-arg", "d_model"], "give --model too"),
    (["--fail-on", "dead"], "coord-check flags: grows_with_width, shrinks_with_width"),
    (["--init", "kaiming,xavier"], "follows one scheme"),
    (["--optimizer", "sgd", "--lr", "10", "--steps", "8", "--widths", "64,128,512"],
     "diverged: width"),
])
def test_mistakes_are_one_line_exit_2_and_nothing_written(cli, tmp_path, args, message):
    (tmp_path / "nets.py").write_text(MODEL)
    out = tmp_path / "never.json"
    given = [a.replace("{nets}", str(tmp_path / "nets.py")) for a in args]
    quick = [q for q in QUICK if q != "-q"]
    if "--widths" in given:  # the case's own widths replace the quick ones
        at = quick.index("--widths")
        quick = quick[:at] + quick[at + 2:]
    if "--steps" in given:
        at = quick.index("--steps")
        quick = quick[:at] + quick[at + 2:]
    result = cli("coord-check", *quick, *given, "-o", str(out), code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("actstat: error: ")
    assert not out.exists()


@pytest.mark.slow
def test_plot_redraws_a_coord_check_without_torch(cli, tmp_path):
    pytest.importorskip("matplotlib")
    report = tmp_path / "coord.json"
    figure = tmp_path / "coord.png"
    cli("coord-check", *QUICK, "--plot", str(tmp_path / "first.png"), "-f", "json", "-o",
        str(report))
    assert (tmp_path / "first.png").stat().st_size > 0
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'))\n"
            "sys.argv = ['actstat', 'plot', sys.argv[1], '-o', sys.argv[2]]\n"
            "from actstat.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", code, str(report), str(figure)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH")
    assert figure.stat().st_size > 0


def test_text_renders_keep_the_verdict():
    text = plain_text(coord_tables(hand_made(WIDTH_STABLE), 80), 80)
    assert "verdict: width-stable" in text and isinstance(Text(text), Text)


@pytest.mark.slow
def test_check_holds_a_coord_checks_slopes_to_its_baseline(cli, tmp_path, monkeypatch):
    """A coord check written as JSON is a baseline: `check` runs the coord check again and
    compares every slope (check.slope_atol); a config that breaks the parameterisation fails,
    naming the step and layer."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cc.yaml").write_text("device: cpu\ncoord_check:\n"
                                      "  widths: [32, 64, 128]\n  steps: 2\n  seeds: 2\n"
                                      "  param: mup\n  batch_size: 128\n")
    cli("coord-check", "cc.yaml", "-f", "json", "-o", "base.json", "-q")
    passed = cli("check", "base.json", "-q")
    assert "all 9 slopes within tolerance (slope)" in passed.stdout
    (tmp_path / "cc.yaml").write_text((tmp_path / "cc.yaml").read_text().replace(
        "param: mup", "param: sp"))
    failed = cli("check", "base.json", code=1)
    assert "coord_check.param: 'mup' → 'sp'" in failed.stdout
    # μP's zero readout has no slope at init; SP's has one
    assert "slopes drifted; first at step 0 (coord check, layer head, slope)" in failed.stdout
    assert "check FAILED" in failed.stderr
