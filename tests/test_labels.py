"""The label a table prints for a scheme is accepted back by --init/--act and in YAML, and
means the same config as the mapping it stands for."""

from __future__ import annotations

import json

import pytest

from actstat.config import load_config
from actstat.errors import ConfigError
from actstat.registry import parse_label, split_top_level

SMALL = ["--depth", "2", "--width", "8", "--batch-size", "16", "--data", "gaussian",
         "--device", "cpu", "--no-theory"]


@pytest.mark.parametrize("text, entry", [
    ("relu", "relu"),
    ("general_relu(subtract=0.5)", {"name": "general_relu", "subtract": 0.5}),
    ("kaiming(mode='fan_out')", {"name": "kaiming", "mode": "fan_out"}),
    ("kaiming(mode=fan_out, gain=2)", {"name": "kaiming", "mode": "fan_out", "gain": 2}),
    ("lsuv(tol=1e-05)", {"name": "lsuv", "tol": 1e-05}),
    ("leaky_relu(negative_slope=0.2)", {"name": "leaky_relu", "negative_slope": 0.2}),
    ("kaiming [bias constant(value=0.1)]",
     {"name": "kaiming", "bias": {"name": "constant", "value": 0.1}}),
    ("relu()", "relu"),
])
def test_a_label_reads_back_as_its_entry(text, entry):
    assert parse_label(text) == entry


@pytest.mark.parametrize("text", ["kaiming(fan_out)", "kaiming(mode=fan_in", "x(a=1,,b=2)",
                                  "kaiming(name=x)"])
def test_a_label_that_cannot_be_read_is_a_config_error(text):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        parse_label(text)


def test_commas_inside_parentheses_do_not_split():
    assert split_top_level("relu,general_relu(subtract=0.2, leak=0.1),tanh") == [
        "relu", "general_relu(subtract=0.2, leak=0.1)", "tanh"]


@pytest.mark.parametrize("option, label, section", [
    ("--act", "general_relu(subtract=0.5)", "activation"),
    ("--act", "general_relu(leak=0.1, subtract=0.2)", "activation"),
    ("--init", "kaiming(mode='fan_out')", "init"),
])
def test_the_printed_label_runs_the_scheme_it_names(cli, option, label, section):
    raw = json.loads(cli("run", *SMALL, option, label, "-f", "json").stdout)
    assert label in raw["runs"][0]["scheme"]
    yaml_form = {"name": parse_label(label)["name"], **{k: v for k, v in parse_label(label).items()
                                                        if k != "name"}}
    resolved = load_config(None, {section: [yaml_form]})
    assert raw["config"][section] == [spec.model_dump() for spec in getattr(resolved, section)]


def test_labels_and_names_mix_in_one_option(cli):
    raw = json.loads(cli("compare", *SMALL, "-i", "kaiming",
                         "--act", "relu,general_relu(subtract=0.5)", "-f", "json").stdout)
    assert [run["scheme"] for run in raw["runs"]] == [
        "kaiming + relu", "kaiming + general_relu(subtract=0.5)"]


def test_a_label_in_yaml_means_what_the_mapping_means(tmp_path):
    labelled, mapped = tmp_path / "a.yaml", tmp_path / "b.yaml"
    labelled.write_text("init: kaiming(mode=fan_out)\nactivation: [general_relu(subtract=0.4)]\n")
    mapped.write_text("init: {name: kaiming, mode: fan_out}\n"
                      "activation: [{name: general_relu, subtract: 0.4}]\n")
    assert load_config(labelled) == load_config(mapped)
