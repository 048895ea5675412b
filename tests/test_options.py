"""The run options are declared once (actstat/options.py): every measuring command has them, in
one order, and each one given reaches the config as the same key and value."""

from __future__ import annotations

import pytest
import typer.main

from actstat.cli import app
from actstat.errors import ConfigError
from actstat.options import OVERRIDES, RUN_OPTIONS

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
# the commands that measure, and the run options each leaves out
MEASURING = {"run": (), "compare": (), "baseline": (), "check": (),
             "train": ("layers", "batch_size", "grad", "theory"),
             "coord-check": ("layers", "width", "batch_size", "grad", "theory")}
# every run option on a command line, and what the config must receive
GIVEN = [
    ("init", ["-i", "kaiming,lecun", "--init", "xavier"], "init", ["kaiming", "lecun", "xavier"]),
    ("act", ["-a", "relu", "--act", "tanh"], "activation", ["relu", "tanh"]),
    ("model", ["-m", "nets.py:make"], "model.factory", "nets.py:make"),
    ("model_arg", ["--model-arg", "n_layer=4", "--model-arg", "act=gelu", "--model-arg",
                   "depths=[1, 2]"], "model.kwargs", {"n_layer": 4, "act": "gelu",
                                                      "depths": [1, 2]}),
    ("layers", ["--layers", "Conv2d,blocks.*"], "model.layers", ["Conv2d", "blocks.*"]),
    ("depth", ["-d", "7"], "model.depth", 7),
    ("width", ["-w", "50,60"], "model.width", [50, 60]),
    ("block", ["--block", "residual"], "model.block", "residual"),
    ("branch_depth", ["--branch-depth", "2"], "model.branch_depth", 2),
    ("norm", ["--norm", "layernorm"], "model.norm", "layernorm"),
    ("norm_position", ["--norm-position", "post"], "model.norm_position", "post"),
    ("multiplier", ["--multiplier", "0.5"], "model.multiplier", 0.5),
    ("batch_size", ["-b", "32"], "data.batch_size", 32),
    ("data", ["--data", "gaussian"], "data.source", "gaussian"),
    ("vocab", ["--vocab", "100"], "data.vocab", 100),
    ("length", ["--length", "16"], "data.length", 16),
    ("device", ["--device", "cpu"], "device", "cpu"),
    ("dtype", ["--dtype", "float64"], "dtype", "float64"),
    ("seed", ["-s", "3"], "seed", 3),
    ("bias", ["--no-bias"], "model.bias", False),
    ("grad", ["--no-grad"], "grad", False),
    ("theory", ["--theory"], "theory", True),
]
# options that choose what a command does or writes, not a config value
NOT_CONFIG = {"config", "target", "plot", "format", "output", "fail_on", "force", "quiet", "wide",
              "no_color", "sort", "detail", "max_drift", "stored_config", "update", "junit_xml",
              "heatmap", "tensorboard", "ray"}


def test_every_run_option_is_given_and_read():
    assert [name for name, *_ in GIVEN] == list(RUN_OPTIONS)
    assert set(RUN_OPTIONS) <= set(OVERRIDES)


@pytest.mark.parametrize("command", MEASURING)
def test_the_run_options_follow_the_config_in_one_order(command):
    names = [param.name for param in COMMANDS[command].params]
    after = names.index("config") + 1
    shared = [name for name in RUN_OPTIONS if name not in MEASURING[command]]
    assert names[after:after + len(shared)] == shared
    assert not set(MEASURING[command]) & set(names)


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"plot"}))
def test_every_option_sets_a_config_value_or_chooses_an_output(command):
    """A new option that sets a config value must be in OVERRIDES, or it would be ignored."""
    for param in COMMANDS[command].params:
        assert param.name in OVERRIDES or param.name in NOT_CONFIG, param.name


@pytest.mark.parametrize("command", MEASURING)
def test_each_run_option_reaches_the_config(cli, monkeypatch, command):
    received = []

    def stop(*args, **kwargs):  # load_config(path, overrides) or check.plan(request)
        received.append(args[1] if len(args) > 1 else args[0].overrides)
        raise ConfigError("stopped here")

    # gate first: importing it while load_config is the stub would bind the stub for good
    monkeypatch.setattr("actstat.gate.plan", stop)
    monkeypatch.setattr("actstat.config.load_config", stop)
    given = [(args, key, value) for name, args, key, value in GIVEN
             if name not in MEASURING[command]]
    result = cli(command, *[word for args, _, _ in given for word in args], code=2)
    assert "actstat: error: stopped here" in result.stderr
    assert received == [{key: value for _, key, value in given}]


@pytest.mark.parametrize("given", ["n_layer", "=4", "n layer=4"])
def test_a_model_arg_is_key_equals_value(given):
    from actstat.options import overrides

    with pytest.raises(ConfigError, match="--model-arg"):
        overrides({"model_arg": [given]})
