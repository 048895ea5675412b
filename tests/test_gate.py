"""`actstat check` as a CI gate: it re-reads the config file a baseline was made from, so an edited
config fails the check; it says why on stderr whatever --format and --output chose."""

from __future__ import annotations

import json
import shutil

import pytest

CONFIG = """\
model: {depth: 4, width: 16}
data: {batch_size: 64}
init: kaiming
activation: relu
device: cpu
"""


@pytest.fixture
def project(cli, tmp_path):
    """A config and a baseline made from it in another directory, as a repository keeps them."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "baselines").mkdir()
    config = tmp_path / "configs" / "net.yaml"
    config.write_text(CONFIG)
    baseline = tmp_path / "baselines" / "net.json"
    cli("baseline", str(config), "-o", str(baseline))
    return config, baseline


def to_xavier(config) -> None:
    config.write_text(config.read_text().replace("init: kaiming", "init: xavier"))


def test_the_baseline_records_its_config_relative_to_itself(project):
    config, baseline = project
    assert json.loads(baseline.read_text())["config_file"] == "../configs/net.yaml"


def test_run_output_records_the_config_and_stdout_records_it_absolute(cli, project, tmp_path):
    config, _ = project
    cli("run", str(config), "-f", "json", "-o", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["config_file"] == "configs/net.yaml"
    printed = json.loads(cli("run", str(config), "-f", "json").stdout)
    assert printed["config_file"] == str(config.resolve())
    no_file = json.loads(cli("run", "--depth", "2", "--width", "8", "-b", "16", "--device", "cpu",
                             "-f", "json").stdout)
    assert no_file["config_file"] is None


def test_an_unchanged_config_passes(cli, project):
    _, baseline = project
    result = cli("check", str(baseline))
    assert result.stdout.endswith("passed\n") and result.stderr == ""


def test_an_edited_config_fails_and_says_what_changed(cli, project):
    config, baseline = project
    to_xavier(config)
    result = cli("check", str(baseline), code=1)
    assert "config changes against the baseline:" in result.stdout
    assert "  init[0].name: 'kaiming' → 'xavier'" in result.stdout.splitlines()
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"actstat: checking {config}: "
                               "3 change(s) against the baseline; first: ")
    assert lines[1].startswith("actstat: check FAILED: ") and "values drifted" in lines[1]
    assert len(lines) == 5 and all(line.startswith("  kaiming + relu → xavier + relu, layer ")
                                   for line in lines[2:])


def test_stored_config_checks_library_drift_alone(cli, project):
    config, baseline = project
    to_xavier(config)
    result = cli("check", str(baseline), "--stored-config")
    assert result.stdout.endswith("passed\n") and "config changes" not in result.stdout


def test_a_gone_config_file_is_said_and_the_stored_copy_runs(cli, project):
    config, baseline = project
    config.unlink()
    result = cli("check", str(baseline))
    assert result.stderr.splitlines() == [
        f"actstat: {baseline}: its config file {config} is gone; "
        "checking the config stored in the baseline"]
    assert result.stdout.endswith("passed\n")


def test_the_record_moves_with_the_repository(cli, project, tmp_path):
    config, baseline = project
    moved = shutil.copytree(tmp_path, tmp_path.parent / (tmp_path.name + "-clone"))
    to_xavier(config)  # the original: the clone's config is untouched
    cli("check", str(moved / "baselines" / "net.json"))
    to_xavier(moved / "configs" / "net.yaml")
    cli("check", str(moved / "baselines" / "net.json"), code=1)


def test_a_report_without_the_record_checks_its_stored_config(cli, project):
    config, baseline = project
    raw = json.loads(baseline.read_text())
    del raw["config_file"]  # as written before config_file existed
    baseline.write_text(json.dumps(raw))
    to_xavier(config)
    result = cli("check", str(baseline))
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["-f", "markdown", "-o", "{tmp}/summary.md"],
                                  ["-f", "json"], ["-o", "{tmp}/table.txt", "--quiet"]])
def test_a_failing_check_says_why_on_stderr_whatever_the_output(cli, project, tmp_path, args):
    config, baseline = project
    to_xavier(config)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = cli("check", str(baseline), *args, code=1)
    failed = [line for line in result.stderr.splitlines() if "check FAILED" in line]
    assert failed and "values drifted; first at layer" in failed[0]
    assert "expected " in result.stderr and "obtained " in result.stderr


def test_update_says_the_baseline_was_updated(cli, project):
    config, baseline = project
    to_xavier(config)
    result = cli("check", str(baseline), "--update")
    assert "FAILED" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "baseline updated with the new values"
    assert result.stderr.splitlines()[-1].startswith(
        f"actstat: updated {baseline} with the new values (")
    assert json.loads(baseline.read_text())["config_file"] == "../configs/net.yaml"
    assert cli("check", str(baseline)).stdout.endswith("passed\n")
    body = json.loads(cli("check", str(baseline), "--update", "-f", "json").stdout)
    assert body["updated"] is True


def test_config_and_stored_config_exclude_each_other(cli, project):
    config, baseline = project
    result = cli("check", str(baseline), "--config", str(config), "--stored-config", code=2)
    assert result.stderr == ("actstat: error: --config and --stored-config: choose one config "
                             "to run\n")


NETS = """\
import torch


def make():
    return torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
"""


def test_a_factory_path_is_stored_relative_to_its_config_and_checked_from_anywhere(
        cli, tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "baselines").mkdir()
    (tmp_path / "configs" / "nets.py").write_text(NETS)
    config = tmp_path / "configs" / "net.yaml"
    config.write_text("model: {factory: nets.py:make}\ndata: {batch_size: 32}\ndevice: cpu\n")
    monkeypatch.chdir(tmp_path)
    cli("baseline", "configs/net.yaml", "-o", "baselines/net.json", "-q")
    stored = json.loads((tmp_path / "baselines" / "net.json").read_text())["config"]
    assert stored["model"]["factory"] == "nets.py:make"  # as the YAML says, on every machine
    for where, target, extra in [(tmp_path, "baselines/net.json", ()),
                                 (tmp_path / "configs", "../baselines/net.json", ()),
                                 (tmp_path, "baselines/net.json", ("--config", str(config)))]:
        monkeypatch.chdir(where)
        result = cli("check", target, *extra)
        assert "change(s) against the baseline" not in result.stderr, result.stderr
