"""`actstat run` as a user sees it: outputs, exit codes, one-line errors, determinism, start-up."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from actstat.atomic import write_atomic
from actstat.errors import OutputError
from conftest import ROOT, SMALL
from terminal import colour_codes, run_on_a_terminal


@pytest.mark.slow
def test_default_run_prints_a_table_and_a_verdict(cli):
    result = cli("run", *SMALL)
    assert "kaiming + relu" in result.stdout
    assert "kaiming + relu: healthy" in result.stdout
    assert result.stderr == ""
    assert "\x1b[" not in result.stdout  # no colour codes when stdout is not a terminal


@pytest.mark.slow
def test_every_combination_runs(cli):
    result = cli("run", *SMALL, "--init", "kaiming,lecun,randn", "--act", "relu,tanh",
                 "-f", "json")
    runs = json.loads(result.stdout)["runs"]
    assert [(r["init"], r["act"]) for r in runs] == [
        (i, a) for i in ("kaiming", "lecun", "randn") for a in ("relu", "tanh")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "table"])
def test_formats_go_to_stdout_and_nothing_else_does(cli, fmt):
    result = cli("run", *SMALL, "--init", "kaiming,randn", "-f", fmt)
    if fmt == "json":
        assert len(json.loads(result.stdout)["runs"]) == 2
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 2 * (3 + 1)  # + head
    elif fmt == "markdown":
        assert result.stdout.startswith("## actstat report")
    if fmt != "table":  # verdicts go to stderr, so a pipe gets the format alone
        assert "randn + relu: exploding from layer 1" in result.stderr
    else:  # the table holds its verdicts: stderr stays empty
        assert "randn + relu: exploding from layer 1" in result.stdout and result.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("fmt, check", [
    ("json", lambda text: json.loads(text)["schema_version"] == 4),
    ("csv", lambda text: text.startswith("scheme,init,act")),
    ("markdown", lambda text: "| layer |" in text),
    ("table", lambda text: "kaiming + relu: healthy" in text),
])
def test_output_file(cli, tmp_path, fmt, check):
    path = tmp_path / f"report.{fmt}"
    result = cli("run", *SMALL, "-f", fmt, "-o", str(path))
    assert result.stdout == ""
    assert check(path.read_text(encoding="utf-8"))
    assert f"wrote {path}" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_no_grad_leaves_gradients_null(cli):
    raw = json.loads(cli("run", *SMALL, "--no-grad", "-f", "json").stdout)
    run = raw["runs"][0]
    assert run["loss"] is None and run["train"] is None
    assert all(entry["grad"] is None for entry in run["layers"])
    assert raw["config"]["grad"] is False
    table = cli("run", *SMALL, "--no-grad").stdout
    assert "grad std" not in table


@pytest.mark.slow
def test_gradients_are_on_by_default(cli):
    raw = json.loads(cli("run", *SMALL, "-f", "json").stdout)
    run = raw["runs"][0]
    assert run["loss"] > 0 and all(entry["grad"]["std"] > 0 for entry in run["layers"])
    assert "grad std" in cli("run", *SMALL).stdout


@pytest.mark.slow
def test_steps_add_a_training_section(cli):
    result = cli("run", *SMALL, "--init", "zeros", "--steps", "3", "--lr", "0.2")
    assert "training: 3 SGD steps at lr 0.2" in result.stdout
    assert "hidden weights never moved; units still identical in 3 of 3 layers" in result.stdout
    raw = json.loads(cli("run", *SMALL, "--steps", "2", "-f", "json").stdout)
    assert len(raw["runs"][0]["train"]["loss"]) == 3
    rows = list(csv.DictReader(io.StringIO(cli("run", *SMALL, "--steps", "2", "-f", "csv").stdout)))
    assert rows[0]["train_still_symmetric"] == "False" and float(rows[0]["grad_std"]) > 0


def test_quiet(cli):
    assert cli("run", *SMALL, "-f", "json", "-q").stderr == ""


def test_yaml_config_and_cli_precedence(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {depth: 5, width: 8}\ninit: [lecun, randn]\n"
                      "data: {batch_size: 32}\ndevice: cpu\n")
    raw = json.loads(cli("run", str(config), "-f", "json").stdout)
    assert [r["init"] for r in raw["runs"]] == ["lecun", "randn"]
    assert len(raw["runs"][0]["layers"]) == 5 + 1  # the hidden layers, then the head
    raw = json.loads(cli("run", str(config), "--depth", "2", "--init", "kaiming",
                         "-f", "json").stdout)
    assert [r["init"] for r in raw["runs"]] == ["kaiming"]
    assert len(raw["runs"][0]["layers"]) == 2 + 1 and raw["config"]["model"]["width"] == 8


def test_every_option_reaches_the_config(cli):
    raw = json.loads(cli("run", "--init", "xavier", "--act", "tanh", "--depth", "2",
                         "--width", "7,5", "--batch-size", "20", "--data", "gaussian",
                         "--device", "cpu", "--dtype", "float64", "--seed", "4", "--no-bias",
                         "-f", "json").stdout)
    config = raw["config"]
    assert (config["model"]["depth"], config["model"]["width"], config["model"]["bias"]) == (
        2, [7, 5], False)
    assert (config["data"]["batch_size"], config["data"]["source"]) == (20, "gaussian")
    assert (config["device"], config["dtype"], config["seed"]) == ("cpu", "float64", 4)
    assert [entry["fan_out"] for entry in raw["runs"][0]["layers"]] == [7, 5, 10]  # + head
    assert raw["input"]["batch_size"] == 20 and raw["input"]["labelled"] is False


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_run(cli, config):
    raw = json.loads(cli("run", str(config), "--batch-size", "50", "--device", "cpu",
                         "-f", "json").stdout)
    depth = raw["config"]["model"]["depth"]
    assert raw["runs"]
    # the plain MLP's rows are its hidden layers and its head; a residual scheme (depth100.yaml)
    # has its own
    assert all(len(r["layers"]) == depth + 1 for r in raw["runs"] if r["model"] is None)
    assert all(r["layers"] for r in raw["runs"])


def test_an_option_that_breaks_a_files_rule_is_named(cli):
    result = cli("run", str(ROOT / "configs" / "fan_modes.yaml"), "--depth", "2", code=2)
    assert "fan_modes.yaml with --depth: model: width lists 6 layers but depth is 2" \
        in result.stderr


@pytest.mark.slow
def test_lesson8_config_shows_the_lessons_three_activations(cli):
    raw = json.loads(cli("run", str(ROOT / "configs" / "lesson8.yaml"), "--device", "cpu",
                         "-f", "json").stdout)
    verdicts = {(r["init"], r["act"]): r["verdict"] for r in raw["runs"]}
    assert verdicts["randn", "relu"] == "exploding"
    assert verdicts["randn", "tanh"] == "saturated"
    assert verdicts["lecun", "relu"] == "vanishing"
    assert verdicts["kaiming", "relu"] == "healthy"
    # "ReLU minus 0.5" recentres the post-activation mean
    means = {r["act"]: r["layers"][0]["post"]["mean"] for r in raw["runs"] if r["init"] == "kaiming"}
    assert means["general_relu"] == pytest.approx(means["relu"] - 0.5, abs=1e-5)


@pytest.mark.parametrize("args, code", [
    (["--init", "randn", "--fail-on", "exploding"], 1),
    (["--init", "randn", "--fail-on", "any"], 1),
    (["--init", "kaiming", "--fail-on", "exploding,vanishing"], 0),
    (["--init", "zeros", "--fail-on", "symmetric"], 1),
    (["--init", "randn", "--fail-on", "exploding", "-f", "json", "-q"], 1),
])
def test_fail_on(cli, args, code):
    result = cli("run", *SMALL, *args, code=code)
    if code == 1 and "-q" not in args:
        assert "--fail-on:" in result.stderr and "first:" in result.stderr


def test_fail_on_still_writes_the_report(cli, tmp_path):
    path = tmp_path / "r.json"
    cli("run", *SMALL, "--init", "randn", "--fail-on", "exploding", "-f", "json",
        "-o", str(path), code=1)
    assert json.loads(path.read_text())["runs"][0]["verdict"] == "exploding"


# every documented user error: exit 2, one line on stderr, no traceback, the key words
ERRORS = [
    (["--dpeth", "3"], "no such option --dpeth (did you mean --depth?)"),
    (["--depth"], "requires an argument"),
    (["--depth", "0"], "--depth: model.depth: must be ≥ 1 (got 0)"),
    (["--depth", "abc"], "must be a whole number (got 'abc')"),
    (["--width", "10,0"], "every width must be between 1 and"),
    (["--width", "10,,3"], "--width: empty name"),
    (["--batch-size", "-5"], "must be ≥ 1"),
    (["--batch-size", "6000"], "batch_size 6000 is more than its 5000 samples"),
    (["--seed", "x"], "seed: must be a whole number"),
    (["--init", "kaimin"], "did you mean 'kaiming'"),
    (["--init", ""], "--init: give at least one name"),
    (["--init", ","], "--init: give at least one name"),
    (["--init", "kaiming,"], "--init: empty name"),
    (["--act", "rleu"], "did you mean 'relu'"),
    (["--dtype", "float8"], "dtype: must be one of"),
    (["--device", "tpu"], "device: must be auto, cpu, cuda or cuda:N"),
    (["--data", "nowhere.npy"], "no such file or directory"),
    (["--format", "xml"], "--format: unknown format 'xml'"),
    (["--fail-on", "exploded"], "--fail-on: unknown flag 'exploded'"),
    (["-o", "/nonexistent-dir/r.json"], "directory '/nonexistent-dir' does not exist"),
    (["missing.yaml"], "missing.yaml: config file not found"),
    (["--steps", "3", "--no-grad"], "train.steps needs gradients"),
    (["--steps", "-1"], "--steps: train.steps: must be ≥ 0"),
    (["--lr", "0"], "--lr: train.lr: must be > 0"),
    (["--lr", "fast"], "train.lr: must be a number"),
]


@pytest.mark.parametrize("args, message", [
    # -o's directory is checked when the report is written, after a full default run: slow
    pytest.param(args, message, id=" ".join(args) or "''",
                 marks=[pytest.mark.slow] if args[0] == "-o" else [])
    for args, message in ERRORS])
def test_user_errors_exit_2_with_one_line(cli, args, message):
    result = cli("run", *args, code=2)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_bad_config_file_errors(cli, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  depth: [1, 2\n")
    result = cli("run", str(path), code=2)
    assert f"{path}: invalid YAML at line" in result.stderr


def test_a_failed_run_leaves_an_existing_output_untouched(cli, tmp_path):
    path = tmp_path / "r.json"
    path.write_text("previous")
    cli("run", "--depth", "0", "-o", str(path), code=2)
    assert path.read_text() == "previous"


def test_atomic_write_survives_an_interruption(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("previous")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new contents")
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_errors(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        write_atomic(tmp_path, "x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(OutputError, match="cannot write"):
            write_atomic(locked / "r.json", "x")
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_same_seed_gives_byte_identical_json(cli):
    args = ("run", *SMALL, "--init", "kaiming,randn,orthogonal", "--act", "relu,tanh",
            "-f", "json")
    assert cli(*args).stdout == cli(*args).stdout
    other = cli("run", *SMALL, "--seed", "1", "-f", "json").stdout
    assert other != cli("run", *SMALL, "-f", "json").stdout


def run_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actstat", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.slow
def test_byte_identical_json_across_processes():
    first = run_process("run", *SMALL, "--init", "kaiming,xavier", "-f", "json")
    second = run_process("run", *SMALL, "--init", "kaiming,xavier", "-f", "json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


PROBE = ("import sys, atexit\n"
         "atexit.register(lambda: print('TORCH' if {'torch', 'transformers'} & set(sys.modules)"
         " else 'NO-TORCH'))\n"
         "sys.argv = ['actstat', *sys.argv[1:]]\n"
         "from actstat.cli import main\n"
         "main()\n")


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["-h"], ["--version"],
                                  ["run", "--model", "hf:gpt2", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    """Nor transformers, whose import takes seconds: a model by name is resolved only when the
    config is loaded."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("NO-TORCH"), result.stdout[-300:]


@pytest.mark.slow
def test_python_dash_m_and_version():
    result = run_process("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("actstat ")


@pytest.mark.slow
def test_no_arguments_shows_help():
    result = run_process()
    assert result.returncode == 0 and "run" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("no_color", [None, "1"], ids=["colour", "NO_COLOR"])
def test_a_terminal_gets_colour_unless_no_color_is_set(no_color):
    # a pseudo-terminal, because colour appears only where stdout is a terminal (CliRunner's
    # stdout never is); any value of NO_COLOR turns colour off (no-color.org)
    code, output = run_on_a_terminal("run", *SMALL, "--init", "randn", env={"NO_COLOR": no_color})
    text = output.decode(errors="replace")
    assert code == 0, text
    assert "randn + relu" in text and "exploding" in text  # the table and its verdict
    verdict = re.search(rb"(\x1b\[[0-9;]*m)+exploding", output)  # the verdict word, styled
    if no_color is None:
        assert verdict and colour_codes(verdict.group(0)), text  # in its flag's colour
    else:
        assert colour_codes(output) == [], text  # bold may stay: NO_COLOR is about colour
