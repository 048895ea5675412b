"""`actstat baseline` and `actstat check`: drift against a baseline, drift bounds, CI outputs."""

from __future__ import annotations

import hashlib
import json
from xml.etree import ElementTree

import pytest
import torch

SMALL10 = ["--depth", "10", "--width", "32", "--batch-size", "256", "--device", "cpu"]

# every test measures a baseline or a check run (seconds each)
pytestmark = pytest.mark.slow


@pytest.fixture
def baseline(cli, tmp_path):
    path = tmp_path / "base.json"
    result = cli("baseline", *SMALL10, "-o", str(path))
    assert f"wrote {path} (1 scheme(s), 11 layers)" in result.stderr  # 10 hidden, the head
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_baseline_checked_against_itself_passes(cli, baseline):
    result = cli("check", str(baseline))
    assert "all 64 values within tolerance" in result.stdout and "passed" in result.stdout


def test_baseline_default_path_and_run_reports_as_baselines(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli("baseline", *SMALL10, "--init", "kaiming,lecun")
    assert (tmp_path / "actstat-baseline.json").exists()
    cli("check", "actstat-baseline.json")
    cli("run", *SMALL10, "-f", "json", "-o", "run.json")
    cli("check", "run.json")
    cli("compare", *SMALL10, "--init", "kaiming,xavier", "-f", "json", "-o", "cmp.json")
    cli("check", "cmp.json")


def test_another_thread_count_passes(cli, baseline):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli("check", str(baseline))
    finally:
        torch.set_num_threads(threads)


def drifted_layers(result_json: str, metric: str = "post_std") -> list[int]:
    return sorted({d["layer"] for d in json.loads(result_json)["drifts"] if d["metric"] == metric})


@pytest.mark.parametrize("change", [["--init", "default"], ["--act", "tanh"]])
def test_a_real_change_fails_and_lists_the_layers(cli, baseline, change):
    result = cli("check", str(baseline), *change, "-f", "json", code=1)
    layers = drifted_layers(result.stdout)
    assert 1 in layers or 2 in layers
    body = json.loads(result.stdout)
    assert body["passed"] is False and body["summary"][0].startswith(f"{body['drifted']} of 64")
    assert any(change[1] in line for line in body["config_changes"])


def test_fan_in_to_fan_out_fails_from_the_first_layer(cli, baseline, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {depth: 10, width: 32}\ndata: {batch_size: 256}\ndevice: cpu\n"
                      "init: {name: kaiming, mode: fan_out}\n")
    result = cli("check", str(baseline), "--config", str(config), code=1)
    assert "init[0].mode: 'fan_in' → 'fan_out'" in result.stdout
    assert "kaiming + relu → kaiming(mode='fan_out') + relu" in result.stdout
    # layer 1 is 784 -> 32: fan_out = 32 instead of 784, std ×√(784/32) ≈ 4.9
    assert "first at layer 1" in result.stdout


def test_default_to_kaiming_fails(cli, tmp_path):
    path = tmp_path / "b.json"
    cli("baseline", *SMALL10, "--init", "default", "-o", str(path))
    result = cli("check", str(path), "--init", "kaiming", "-f", "json", code=1)
    assert drifted_layers(result.stdout) == list(range(1, 12))  # the head (11) too


@pytest.mark.parametrize("factor, code", [(1.04, 0), (1.11, 1), (0.9, 1)])
def test_ten_percent_fails_and_four_percent_passes(cli, baseline, tmp_path, factor, code):
    raw = json.loads(baseline.read_text())
    raw["runs"][0]["layers"][3]["post"]["std"] *= factor
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    result = cli("check", str(edited), "-f", "json", code=code)
    if code:
        assert [(d["layer"], d["metric"]) for d in json.loads(result.stdout)["drifts"]] == [
            (4, "post_std")]


def test_per_metric_tolerances_and_metric_selection(cli, baseline, tmp_path):
    raw = json.loads(baseline.read_text())
    raw["runs"][0]["layers"][3]["post"]["std"] *= 1.5
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    cli("check", str(edited), code=1)  # each option below is what lets it pass
    cli("check", str(edited), "--metrics", "pre_std,grad_std")
    cli("check", str(edited), "--rtol", "0.6")
    config = tmp_path / "loose.yaml"
    config.write_text(json.dumps({**raw["config"], "check": {"tolerances": {
        "post_std": {"rtol": 0.6}}}}))
    cli("check", str(edited), "--config", str(config))


def test_mean_tolerance_is_in_units_of_the_std(cli, baseline, tmp_path):
    raw = json.loads(baseline.read_text())
    layer = raw["runs"][0]["layers"][2]
    layer["pre"]["mean"] += 0.04 * layer["pre"]["std"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    cli("check", str(edited))
    layer["pre"]["mean"] += 0.02 * layer["pre"]["std"]
    edited.write_text(json.dumps(raw))
    cli("check", str(edited), code=1)


def test_max_drift_without_a_baseline(cli):
    cli("check", "--max-drift", "2", *SMALL10, "--init", "kaiming")
    result = cli("check", "--max-drift", "2", *SMALL10, "--init", "default", code=1)
    assert "max drift 2" in result.stdout and "default + relu" in result.stdout


def test_max_drift_with_a_config_positional(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {depth: 10, width: 32}\ndata: {batch_size: 256}\ndevice: cpu\n"
                      "init: default\n")
    cli("check", str(config), "--max-drift", "2", code=1)


def test_fail_on_and_max_drift_combine_with_a_baseline(cli, baseline):
    cli("check", str(baseline), "--max-drift", "2", "--fail-on", "exploding")
    result = cli("check", str(baseline), "--max-drift", "1.01", code=1)
    assert "max drift 1.01" in result.stdout


def test_update_rewrites_and_the_next_check_passes(cli, baseline):
    cli("check", str(baseline), "--init", "lecun", code=1)
    before = digest(baseline)
    result = cli("check", str(baseline), "--init", "lecun", "--update")
    assert "values drifted" in result.stdout and f"updated {baseline}" in result.stderr
    assert digest(baseline) != before
    cli("check", str(baseline))


def test_update_refuses_when_a_bound_fails(cli, baseline):
    before = digest(baseline)
    cli("check", str(baseline), "--init", "default", "--max-drift", "2", "--update", code=1)
    assert digest(baseline) == before


def test_junit_xml_and_markdown(cli, baseline, tmp_path):
    junit, summary = tmp_path / "junit.xml", tmp_path / "summary.md"
    cli("check", str(baseline), "--act", "tanh", "--junit-xml", str(junit), "-f", "markdown",
        "-o", str(summary), "--max-drift", "100", code=1)
    root = ElementTree.parse(junit).getroot()
    assert root.tag == "testsuite" and root.get("name") == "actstat check"
    cases = root.findall("testcase")
    assert len(cases) == 6 + 1 and int(root.get("tests")) == 7  # six metric families, max drift
    failed = [case.get("name") for case in cases if case.find("failure") is not None]
    assert "post_std" in failed and "max_drift" not in failed
    assert "layer 1" in cases[1].find("failure").text
    text = summary.read_text()
    assert text.startswith("## actstat check: ❌ failed")
    assert "| scheme | layer | metric |" in text


def test_json_result_of_a_pass(cli, baseline):
    body = json.loads(cli("check", str(baseline), "-f", "json").stdout)
    assert body["passed"] is True and body["compared"] == 64 and body["drifts"] == []


def break_baseline(path, how: str) -> None:
    text = path.read_text()
    raw = json.loads(text)
    if how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "not json":
        path.write_text("this is not JSON\n")
    elif how == "empty":
        path.write_text("")
    elif how == "schema":
        raw["schema_version"] = 5
        path.write_text(json.dumps(raw))
    elif how == "layers":
        raw["runs"][0]["layers"].pop()
        path.write_text(json.dumps(raw))
    elif how == "schemes":
        raw["runs"].append(raw["runs"][0])
        path.write_text(json.dumps(raw))
    elif how == "config":
        raw["config"]["model"]["depth"] = "ten"
        path.write_text(json.dumps(raw))


@pytest.mark.parametrize("how, message", [
    ("truncated", "not valid JSON at line"),
    ("not json", "not valid JSON at line 1, column 1"),
    ("empty", "is empty"),
    ("schema", "schema_version is 5"),
    ("layers", "has 10 rows but its config says depth 10 (10 hidden layers and the head)"),
    ("schemes", "holds 2 scheme(s) but its config describes 1"),
    ("config", "model.depth: must be a whole number"),
])
def test_bad_baselines_exit_2_and_change_nothing(cli, baseline, how, message):
    break_baseline(baseline, how)
    before = digest(baseline)
    result = cli("check", str(baseline), "--update", code=2)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert digest(baseline) == before


def test_missing_baseline(cli, tmp_path):
    result = cli("check", str(tmp_path / "nope.json"), code=2)
    assert "nope.json: no such file" in result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "nothing to check against"),
    (["--max-drift", "0.5"], "--max-drift: must be a number ≥ 1"),
    (["--update", "--max-drift", "2"], "--update rewrites a baseline"),
    (["--format", "csv", "--max-drift", "2"], "check writes table, json, markdown"),
    (["--max-drift", "2", "--metrics", "post_sd"], "check.metrics"),
])
def test_check_usage_errors(cli, args, message):
    result = cli("check", *args, code=2)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
