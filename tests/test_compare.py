"""`actstat compare`: one row per scheme, the same verdicts as single runs, sorting, formats."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from actstat.config import LESSON_SCHEMES
from conftest import SMALL

MNIST20 = ["--device", "cpu"]  # depth 20, width 100, batch 1000: the setting

# every test measures several schemes (seconds each)
pytestmark = pytest.mark.slow


def rows(text: str) -> list[list[str]]:
    """The data rows of a plain compare table: lines under the header rule."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    return [line.split() for line in lines[start:] if line.strip()]


def test_four_schemes_give_the_verdicts_single_runs_give(cli):
    schemes = [("kaiming", "relu"), ("xavier", "relu"), ("randn", "tanh"), ("zeros", "relu")]
    text = cli("compare", "--init", "kaiming,xavier,randn,zeros", "--act", "relu,tanh",
               *MNIST20, "-f", "json").stdout
    compared = {(r["init"], r["act"]): r["verdict"] for r in json.loads(text)["runs"]}
    for init, act in schemes:
        single = json.loads(cli("run", "--init", init, "--act", act, *MNIST20, "-f", "json").stdout)
        assert compared[init, act] == single["runs"][0]["verdict"]
    assert [compared[s] for s in schemes] == ["healthy", "vanishing", "saturated", "symmetric"]


def test_the_table_has_one_row_per_scheme(cli):
    text = cli("compare", "--init", "kaiming,xavier,randn,zeros", "--act", "relu", *SMALL).stdout
    table = rows(text)
    assert len(table) == 4
    assert {row[0] for row in table} == {"kaiming", "xavier", "randn", "zeros"}


def test_grid_and_explicit_list_agree(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("compare:\n" + "".join(
        f"  - {{init: {i}, activation: {a}}}\n"
        for i in ("kaiming", "lecun") for a in ("relu", "tanh")))
    listed = json.loads(cli("compare", str(config), *SMALL, "-f", "json").stdout)["runs"]
    grid = json.loads(cli("compare", "--init", "kaiming,lecun", "--act", "relu,tanh", *SMALL,
                          "-f", "json").stdout)["runs"]
    assert listed == grid


def test_explicit_schemes_keep_their_parameters(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("compare:\n"
                      "  - {init: {name: kaiming, mode: fan_out}, activation: relu}\n"
                      "  - {init: {name: xavier, gain: 1.6667}, activation: tanh}\n"
                      "  - {init: kaiming, activation: {name: general_relu, subtract: 0.5}}\n")
    runs = json.loads(cli("compare", str(config), *SMALL, "-f", "json").stdout)["runs"]
    assert [r["scheme"] for r in runs] == ["kaiming(mode='fan_out') + relu",
                                          "xavier(gain=1.6667) + tanh",
                                          "kaiming + general_relu(subtract=0.5)"]


def test_default_set_is_the_lessons(cli):
    runs = json.loads(cli("compare", *SMALL, "-f", "json").stdout)["runs"]
    assert len(runs) == len(LESSON_SCHEMES)
    assert ("kaiming", "general_relu") in {(r["init"], r["act"]) for r in runs}


SORT_SCHEMES = ["--init", "zeros,randn,kaiming,xavier", "--act", "relu", *MNIST20]


def test_default_sort_puts_healthy_first_and_the_most_fundamental_last(cli):
    table = rows(cli("compare", *SORT_SCHEMES).stdout)
    assert [row[0] for row in table] == ["kaiming", "xavier", "randn", "zeros"]
    assert [row[3] for row in table] == ["healthy", "vanishing", "exploding", "symmetric"]


def test_sort_by_name_and_gain(cli):
    by_name = rows(cli("compare", *SORT_SCHEMES, "--sort", "name").stdout)
    assert [row[0] for row in by_name] == ["kaiming", "randn", "xavier", "zeros"]
    by_gain = json.loads(cli("compare", *SORT_SCHEMES, "--sort", "gain", "-f", "json").stdout)
    csv_rows = list(csv.DictReader(io.StringIO(
        cli("compare", *SORT_SCHEMES, "--sort", "gain", "-f", "csv").stdout)))
    gains = [abs(math.log(float(r["gain"]))) for r in csv_rows if r["gain"]]
    assert len(gains) == 3 and gains == sorted(gains)
    assert csv_rows[-1]["init"] == "zeros"  # no gain: last
    # JSON is the Report itself: --sort orders the views, never the record (the config's order)
    assert [r["init"] for r in by_gain["runs"]] == ["zeros", "randn", "kaiming", "xavier"]


def test_no_progress_bar_when_stderr_is_not_a_terminal(cli):
    result = cli("compare", "--init", "kaiming,randn", *SMALL)
    assert result.stderr == "" and "measur" not in result.stdout


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "table"])
def test_every_format_holds_every_scheme(cli, fmt, tmp_path):
    path = tmp_path / f"out.{fmt}"
    cli("compare", "--init", "kaiming,randn,zeros", "--act", "relu,tanh", *SMALL, "-f", fmt,
        "-o", str(path))
    text = path.read_text(encoding="utf-8")
    labels = [f"{i} + {a}" for i in ("kaiming", "randn", "zeros") for a in ("relu", "tanh")]
    if fmt == "json":
        assert [r["scheme"] for r in json.loads(text)["runs"]] == labels
    elif fmt == "csv":
        assert sorted(r["scheme"] for r in csv.DictReader(io.StringIO(text))) == sorted(labels)
    else:
        assert all(label in text for label in labels)


def test_detail_adds_the_per_layer_tables(cli):
    plain = cli("compare", "--init", "kaiming,randn", *SMALL).stdout
    detailed = cli("compare", "--init", "kaiming,randn", *SMALL, "--detail").stdout
    assert "pre mean" not in plain and detailed.count("pre mean") == 2
    markdown = cli("compare", "--init", "kaiming,randn", *SMALL, "--detail", "-f", "markdown")
    assert markdown.stdout.count("### ") == 2


@pytest.mark.parametrize("args, code", [
    (["--init", "randn", "--fail-on", "exploding"], 1),
    (["--init", "kaiming", "--fail-on", "exploding"], 0),
])
def test_fail_on(cli, args, code):
    cli("compare", *SMALL, *args, code=code)


@pytest.mark.parametrize("args, message", [
    (["--sort", "speed"], "--sort: unknown order 'speed'"),
    (["--init", "kaimin"], "did you mean 'kaiming'"),
    (["--format", "xml"], "--format: unknown format"),
])
def test_errors(cli, args, message):
    result = cli("compare", *SMALL, *args, code=2)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
