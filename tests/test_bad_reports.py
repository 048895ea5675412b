"""A corrupted or hand-edited report or baseline exits 2 with one line naming the file and the key
path of the first bad value (validated against the schema, actstat/schema.py), in every command
that reads one."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from actstat.cli import app
from conftest import SMALL


@pytest.fixture(scope="module")
def good_report(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("report") / "r.json"
    result = CliRunner().invoke(app, ["run", *SMALL, "-f", "json", "-o", str(path)])
    assert result.exit_code == 0, result.stderr
    return path.read_text(encoding="utf-8")


def edit(path):
    def change(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        return node, path[-1]
    return change


def setting(path, value):
    def change(raw):
        node, key = edit(path)(raw)
        node[key] = value
        return raw
    return change


def removing(path):
    def change(raw):
        node, key = edit(path)(raw)
        del node[key]
        return raw
    return change


LAYER = ["runs", 0, "layers", 2]
CORRUPTIONS = {
    "std is text": (setting([*LAYER, "post", "std"], "abc"),
                    "runs[0].layers[2].post.std: must be a number (got 'abc')"),
    "missing key": (removing([*LAYER, "pre", "mean"]), "runs[0].layers[2].pre.mean: is required"),
    "missing section": (removing(["input"]), "input: is required"),
    "negative std": (setting([*LAYER, "pre", "std"], -0.5),
                     "runs[0].layers[2].pre.std: must be ≥ 0 (got -0.5)"),
    "fraction above 1": (setting([*LAYER, "post", "dead"], 1.5),
                         "runs[0].layers[2].post.dead: must be ≤ 1 (got 1.5)"),
    "index as text": (setting([*LAYER, "index"], "3"),
                      "runs[0].layers[2].index: must be a whole number (got '3')"),
    "unknown flag": (setting([*LAYER, "flags"], ["dead", "bogus"]),
                     "runs[0].layers[2].flags[1]: must be one of"),
    "layers not a list": (setting(["runs", 0, "layers"], {"1": {}}),
                          "runs[0].layers: must be a list"),
    "schema version": (setting(["schema_version"], 7),
                       "report schema_version is 7; this actstat reads versions 1, 2, 3 and 4"),
    "a list": (lambda raw: [raw], "not an actstat report: the top level is a list, not a JSON "
                                  "object"),
}


def write_corrupted(good_report: str, path, how: str) -> str:
    if how == "not json":
        path.write_text("{\"schema_version\": 1, oops}\n")
        return "not valid JSON at line 1, column 23"
    change, message = CORRUPTIONS[how]
    path.write_text(json.dumps(change(json.loads(good_report))))
    return message


HOWS = [*CORRUPTIONS, "not json"]


def assert_one_line(result, path, message: str) -> None:
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"actstat: error: {path}: "), lines[0]
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("how", HOWS)
def test_plot_refuses_a_corrupted_report(cli, good_report, tmp_path, how):
    path = tmp_path / "r.json"
    message = write_corrupted(good_report, path, how)
    result = cli("plot", str(path), "-o", str(tmp_path / "f.png"), code=2)
    assert_one_line(result, path, message)
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("how", HOWS)
def test_check_refuses_a_corrupted_baseline(cli, good_report, tmp_path, how):
    path = tmp_path / "base.json"
    message = write_corrupted(good_report, path, how)
    before = path.read_bytes()
    result = cli("check", str(path), "--update", code=2)
    assert_one_line(result, path, message)
    assert path.read_bytes() == before


@pytest.mark.slow
def test_the_good_report_is_accepted(cli, good_report, tmp_path):
    # the corruptions above are the only thing wrong with the files they make
    path = tmp_path / "r.json"
    path.write_text(good_report)
    cli("plot", str(path), "-o", str(tmp_path / "f.png"))
    cli("check", str(path))
