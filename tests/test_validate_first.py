"""Everything a command will write, and the data it reads, is checked before anything is measured:
a typo in a path exits 2 with one line, and no model is built."""

from __future__ import annotations

import sys

import pytest

from conftest import SMALL


@pytest.fixture
def unmeasured(monkeypatch):
    """Measuring fails the test: the commands below must stop before the pipeline runs."""
    import actstat.pipeline

    def measured(*args, **kwargs):
        raise AssertionError("a model was measured before the arguments were validated")

    monkeypatch.setattr(actstat.pipeline, "profile", measured)


@pytest.fixture
def no_matplotlib(monkeypatch):
    # None in sys.modules is how Python spells "this import fails"
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def one_line(result) -> str:
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["run", "compare"])
def test_an_unknown_figure_type_stops_before_measuring(cli, tmp_path, unmeasured, command):
    line = one_line(cli(command, *SMALL, "--plot", str(tmp_path / "out.gif"), code=2))
    assert line == (f"actstat: error: {tmp_path / 'out.gif'}: figures are written as .png, .svg, "
                    ".pdf, not '.gif'")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_matplotlib_stops_before_measuring(cli, tmp_path, unmeasured, no_matplotlib):
    line = one_line(cli("run", *SMALL, "--plot", str(tmp_path / "out.png"), code=2))
    assert line == ("actstat: error: figures need matplotlib, an optional extra: "
                    "pip install 'actstat[plot]'")


def test_plot_checks_the_figure_before_reading_the_report(cli, tmp_path, no_matplotlib):
    report = tmp_path / "missing.json"  # not read: the figure cannot be drawn anyway
    line = one_line(cli("plot", str(report), "-o", str(tmp_path / "f.png"), code=2))
    assert line == ("actstat: error: figures need matplotlib, an optional extra: "
                    "pip install 'actstat[plot]'")


@pytest.mark.parametrize("args, where", [
    (["run", "-f", "json", "-o", "{tmp}/nowhere/r.json"], "nowhere/r.json: directory"),
    (["run", "--plot", "{tmp}/nowhere/f.png"], "nowhere/f.png: directory"),
    (["compare", "-f", "csv", "-o", "{tmp}/nowhere/c.csv"], "nowhere/c.csv: directory"),
    (["baseline", "-o", "{tmp}/nowhere/b.json"], "nowhere/b.json: directory"),
    (["check", "--max-drift", "10", "-o", "{tmp}/nowhere/c.md"], "nowhere/c.md: directory"),
    (["check", "--max-drift", "10", "--junit-xml", "{tmp}/nowhere/j.xml"],
     "nowhere/j.xml: directory"),
])
def test_an_output_in_a_missing_directory_stops_before_measuring(cli, tmp_path, unmeasured,
                                                                  args, where):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = one_line(cli(*args, *SMALL, code=2))
    assert line.startswith("actstat: error: ") and where in line
    assert line.endswith(f"directory '{tmp_path / 'nowhere'}' does not exist")


def test_an_output_under_a_file_stops_before_measuring(cli, tmp_path, unmeasured):
    (tmp_path / "file").write_text("x")
    line = one_line(cli("run", *SMALL, "-f", "json", "-o", str(tmp_path / "file" / "r.json"),
                        code=2))
    assert line.endswith(f"directory '{tmp_path / 'file'}' is not a directory")


def test_a_missing_data_file_stops_before_measuring(cli, tmp_path, unmeasured):
    missing = tmp_path / "features.npy"
    line = one_line(cli("run", *SMALL, "--data", str(missing), code=2))
    assert line.startswith("actstat: error: --data: data.source: must be mnist, gaussian, tokens")
    assert line.endswith(f"(got '{missing}': no such file or directory)")


def test_a_missing_data_file_in_a_config_stops_check_before_measuring(cli, tmp_path, unmeasured):
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: gone.npz}\n")
    line = one_line(cli("check", str(config), "--max-drift", "10", *SMALL, code=2))
    assert line.startswith(f"actstat: error: {config}: data.source: must be mnist")
    assert line.endswith(f"(got '{tmp_path / 'gone.npz'}': no such file or directory)")

