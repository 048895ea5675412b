"""Shell completion of option values: the torch-free tables equal the registries, and what a
TAB offers for each option (through the shell's own protocol, as bash asks)."""

from __future__ import annotations

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from actstat import activations, completion, config, inits, render
from actstat.cli import app
from actstat.outputs import CHECK_FORMATS, COORD_FORMATS, TRAIN_FORMATS
from actstat.records import FLAGS, WIDTH_FLAGS
from actstat.registry import parameters_model


def test_the_tables_are_the_registries():
    assert {
        **{name: tuple(parameters_model(factory).model_fields)
           for name, factory in inits.ALL_INITS.items()}, config.KEEP: ()} == completion.INIT_PARAMETERS
    assert {
        name: tuple(parameters_model(factory).model_fields)
        for name, factory in activations.ACTIVATIONS.items()} == completion.ACTIVATION_PARAMETERS
    assert completion.METRICS == config.METRIC_NAMES
    assert completion.DTYPES == config.DTYPES and completion.DATA_SOURCES == config.DATA_SOURCES
    assert completion.FORMATS == render.FORMATS and tuple(render.SORTS) == completion.SORTS
    assert (completion.CHECK_FORMATS, completion.TRAIN_FORMATS) == (CHECK_FORMATS, TRAIN_FORMATS)
    assert set(completion.NORMS) == set(config.ModelConfig.model_fields["norm"].annotation.__args__)
    assert all(config.DEVICE_PATTERN.match(device) for device in completion.DEVICES)
    coord = config.CoordCheckConfig.model_fields
    assert coord["param"].annotation.__args__ == completion.PARAMETRISATIONS
    assert set(completion.OPTIMIZERS) == set(coord["optimizer"].annotation.__args__)
    assert list(completion.WIDTHS) == config.DEFAULT_WIDTHS
    assert COORD_FORMATS == completion.FORMATS


def offered(words: str) -> list[str]:
    """What bash's completion function gets for the last word of `words`."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    done = CliRunner().invoke(app, [], prog_name="actstat", env={
        "_ACTSTAT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert done.exit_code == 0, done.output
    return done.stdout.split()


@pytest.mark.parametrize("words, expected", [
    ("actstat run --init kai", ["kaiming"]),
    ("actstat run --init kaiming(m", ["kaiming(mode="]),
    ("actstat run --act gen", ["general_relu"]),
    ("actstat run --act general_relu(leak=0.1,sub", ["general_relu(leak=0.1,subtract="]),
    ("actstat run --act relu,ta", ["relu,tanh"]),
    ("actstat compare --init le", ["lecun"]),
    ("actstat run --norm ", ["none", "batchnorm", "layernorm", "rmsnorm"]),
    ("actstat run --block r", ["residual"]),
    ("actstat run --device c", ["cpu", "cuda", "cuda:0", "cuda:1"]),
    ("actstat run --dtype b", ["bfloat16"]),
    ("actstat run -f ", ["table", "json", "csv", "markdown"]),
    ("actstat check -f ", ["table", "json", "markdown"]),
    ("actstat train -f ", ["table", "json"]),
    ("actstat run --fail-on dead,grad_v", ["dead,grad_vanishing"]),
    ("actstat run --fail-on a", ["any"]),
    ("actstat check --metrics pre_std,train_g", ["pre_std,train_grad_std"]),
    ("actstat compare --sort g", ["gain"]),
    ("actstat train --optimizer a", ["adam"]),
    # coord-check's own options, and the run options it shares
    ("actstat coord-check --param ", ["sp", "mup"]),
    ("actstat coord-check --param m", ["mup"]),
    ("actstat coord-check --optimizer s", ["sgd"]),
    ("actstat coord-check --fail-on ", [*WIDTH_FLAGS, "any"]),
    ("actstat coord-check --fail-on grows_with_width,s", ["grows_with_width,shrinks_with_width"]),
    ("actstat coord-check -f ", ["table", "json", "csv", "markdown"]),
    ("actstat coord-check --device cu", ["cuda", "cuda:0", "cuda:1"]),
    ("actstat coord-check --init kaiming(m", ["kaiming(mode="]),
    ("actstat coord-check --act gel", ["gelu"]),
    ("actstat coord-check --widths ", ["64,128,256,512,1024"]),
    ("actstat coord-check --widths 32,64,", ["32,64,128"]),
    ("actstat coord-check --widths 32,6", []),
    ("actstat coord-check --ray ", ["local"]),
])
def test_values_complete(words, expected):
    assert offered(words) == expected


def test_every_flag_completes_for_fail_on():
    assert offered("actstat run --fail-on ") == [*FLAGS, "any"]


def test_data_completes_sources_and_data_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "acts.npy", np.zeros((2, 2)))
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "idx").mkdir()
    assert offered("actstat run --data ") == ["mnist", "gaussian", "tokens", "acts.npy", "idx/"]
    assert offered("actstat run --data to") == ["tokens"]


COMMAND = typer.main.get_command(app)
# values no list can hold: numbers, and names only the user's model knows; files and
# directories are the shell's to complete
NUMBERS = ("INT", "FLOAT", "F", "INT[,INT...]")
PATHS = ("FILE", "DIR")
FREE_TEXT = {"--model", "--model-arg", "--layers", "--heatmap", "--width-arg"}


@pytest.mark.parametrize("name", list(COMMAND.commands))  # type: ignore[attr-defined]
def test_every_option_with_named_values_completes_them(name):
    """Every option that takes a value completes it, whatever the command (a file: the shell's
    own completion), unless the value is a number or a name from the user's own model."""
    command = COMMAND.commands[name]  # type: ignore[attr-defined]
    missing = []
    for param in command.params:
        if param.param_type_name != "option" or param.is_flag or param.metavar in PATHS:
            continue
        option = max(param.opts, key=len)
        if param.metavar in NUMBERS or option in FREE_TEXT:
            continue
        if not offered(f"actstat {name} {option} "):
            missing.append(option)
    assert missing == [], f"{name}: no values complete for {missing}"
