"""Shell completion of option values: the torch-free tables equal the registries, and what a
TAB offers for each option (through the shell's own protocol, as bash asks)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from actstat import activations, completion, config, inits, render
from actstat.cli import app
from actstat.outputs import CHECK_FORMATS, TRAIN_FORMATS
from actstat.records import FLAGS
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
