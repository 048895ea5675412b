"""Names as people type them: any case, the literature's aliases, repeated -i/-a, close guesses."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from actstat.activations import ACTIVATIONS, make_activation
from actstat.errors import ConfigError
from actstat.inits import ALL_INITS, BIAS_INITS, StructuralInit, make_bias_init, make_init
from actstat.model import build_residual, initialise
from actstat.registry import ALIASES, resolve
from conftest import ROOT

CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
REGISTRIES = {"init": ALL_INITS, "activation": ACTIVATIONS, "bias init": BIAS_INITS}
ALL_ALIASES = [(kind, alias) for kind, table in ALIASES.items() for alias in table]
TINY = ["--depth", "2", "--width", "8", "--batch-size", "16", "--device", "cpu", "--no-theory"]


RELU_GAIN = math.sqrt(2.0)


def _drawn(init, shape=(24, 40), seed=3) -> torch.Tensor:
    """A weight of `shape` filled by `init` for a relu network, from a seeded generator."""
    weight = torch.empty(shape)
    init(weight, RELU_GAIN, torch.Generator().manual_seed(seed))
    return weight


@pytest.mark.parametrize("kind, alias", ALL_ALIASES)
def test_every_alias_names_a_registered_entry_and_is_documented(kind, alias):
    target, implied = ALIASES[kind][alias]
    assert target in REGISTRIES[kind], f"{alias} -> {target}, which is not registered"
    assert alias not in REGISTRIES[kind], f"{alias} shadows a registered name"
    assert resolve(REGISTRIES[kind], alias, kind) == (target, implied)
    # one row of an alias table in docs/configuration.md names the alias, its target and
    # what it implies
    rows = [line for line in CONFIGURATION.splitlines()
            if line.startswith("| ") and re.search(rf"`{re.escape(alias)}`", line.split("|")[1])]
    assert rows, f"alias '{alias}' is not in docs/configuration.md's alias tables"
    means = rows[0].split("|")[2]
    assert f"`{target}`" in means
    for key, value in implied.items():
        assert f"`{key}: {value}`" in means


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_registered_names_resolve_in_any_case(kind):
    for name in REGISTRIES[kind]:
        for typed in (name.upper(), name.title(), f"  {name} ", name.replace("_", "-")):
            assert resolve(REGISTRIES[kind], typed, kind) == (name, {})


@pytest.mark.parametrize("alias, torch_init", [
    ("he_normal", lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)),
    ("kaiming_normal", lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)),
    ("he_uniform", lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)),
    ("kaiming_uniform", lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)),
    ("xavier_normal", lambda w, g: nn.init.xavier_normal_(w, generator=g)),
    ("glorot_uniform", lambda w, g: nn.init.xavier_uniform_(w, generator=g)),
])
def test_aliases_draw_what_torch_nn_init_of_that_name_draws(alias, torch_init):
    expected = torch.empty(24, 40)
    torch_init(expected, torch.Generator().manual_seed(3))
    torch.testing.assert_close(_drawn(make_init(alias)), expected, rtol=1e-6, atol=0)


# weights (out 600, in 400): He's Var = 2/fan_in, Glorot's 2/(fan_in + fan_out), LeCun's 1/fan_in
@pytest.mark.parametrize("alias, std", [("he", math.sqrt(2 / 400)), ("msra", math.sqrt(2 / 400)),
                                        ("glorot", math.sqrt(2 / 1000)),
                                        ("lecun_normal", math.sqrt(1 / 400)),
                                        ("lecun_uniform", math.sqrt(1 / 400))])
def test_variance_scaling_aliases_draw_the_papers_variance(alias, std):
    weight = _drawn(make_init(alias), shape=(600, 400))
    assert weight.std().item() == pytest.approx(std, rel=0.01)


def _residual(init) -> nn.Module:
    activation = make_activation("relu")
    model = build_residual(in_features=6, width=8, depth=2, branch_depth=2, num_classes=3,
                           bias=True, activation=activation)
    return initialise(model, init, make_bias_init("zeros"), act_gain=activation.gain, seed=3,
                      device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("kind, alias", ALL_ALIASES)
def test_an_alias_builds_what_its_target_builds(kind, alias):
    target, implied = ALIASES[kind][alias]
    if kind == "activation":
        made, reference = make_activation(alias), make_activation(target, implied)
        assert (made.name, made.gain, repr(made.module())) == \
            (reference.name, reference.gain, repr(reference.module()))
        return
    make = make_init if kind == "init" else make_bias_init
    made, reference = make(alias), make(target, implied)
    if isinstance(made, StructuralInit):  # drawn by a model's structure: compare whole models
        for a, b in zip(_residual(made).parameters(), _residual(reference).parameters(),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif kind == "init":
        torch.testing.assert_close(_drawn(made), _drawn(reference), rtol=0, atol=0)
    else:
        a, b = torch.empty(30), torch.empty(30)
        made(a, 30, torch.Generator().manual_seed(1))
        reference(b, 30, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_alias_with_a_contrary_parameter_is_refused():
    with pytest.raises(ConfigError, match="he_uniform.*kaiming with distribution='uniform'"):
        make_init("he_uniform", {"distribution": "normal"})
    make_init("he_uniform", {"distribution": "uniform", "mode": "fan_out"})  # agreeing is fine


def test_cli_names_in_any_case_and_aliases_are_recorded_by_their_registry_name(cli):
    raw = json.loads(cli("run", *TINY, "-i", "HE,Glorot_Uniform", "-a", "Swish", "-f",
                         "json").stdout)
    assert [run["scheme"] for run in raw["runs"]] == ["kaiming + silu",
                                                      "xavier(distribution='uniform') + silu"]
    assert [init["name"] for init in raw["config"]["init"]] == ["kaiming", "xavier"]
    assert raw["config"]["init"][1]["distribution"] == "uniform"
    assert raw["config"]["activation"] == [{"name": "silu"}]


def test_act_relu_in_title_case_just_works(cli):
    raw = json.loads(cli("run", *TINY, "--act", "Relu", "-f", "json").stdout)
    assert raw["runs"][0]["scheme"] == "kaiming + relu"


@pytest.mark.parametrize("option, typed, guess", [
    ("--act", "Rlu", "'relu'"), ("--act", "RELUU", "'relu'"), ("--init", "Kaimin", "'kaiming'"),
    ("--init", "glorott", "'glorot', i.e. xavier"), ("--act", "swissh", "'swish', i.e. silu"),
])
def test_suggestions_ignore_case_and_include_aliases(cli, option, typed, guess):
    line = cli("run", *TINY, option, typed, code=2).stderr.strip()
    assert f"unknown {option.strip('-').replace('act', 'activation')} '{typed}' " \
           f"(did you mean {guess}?)" in line, line


def test_repeated_init_and_act_add_to_the_list(cli):
    raw = json.loads(cli("run", *TINY, "-i", "kaiming,lecun", "-i", "xavier", "-a", "relu",
                         "--act", "tanh", "-f", "json").stdout)
    assert [run["scheme"] for run in raw["runs"]] == [
        "kaiming + relu", "kaiming + tanh", "lecun + relu", "lecun + tanh", "xavier + relu",
        "xavier + tanh"]


def test_repeated_init_adds_in_compare_too(cli):
    raw = json.loads(cli("compare", *TINY, "-i", "kaiming", "-i", "xavier", "-a", "relu",
                         "-f", "json").stdout)
    assert [run["scheme"] for run in raw["runs"]] == ["kaiming + relu", "xavier + relu"]


def test_an_empty_repeat_is_still_refused(cli):
    line = cli("run", *TINY, "-i", "kaiming", "-i", ",", code=2).stderr
    assert "--init: give at least one name" in line


def test_yaml_names_in_any_case_and_aliases(cli, tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text(
        "init: {name: He, mode: fan_out, bias: {name: Zero}}\n"
        "activation: ReLU\n"
        "compare:\n"
        "  - {init: glorot_uniform, activation: Swish}\n"
        "  - {init: {name: KAIMING, gain: Tanh}, activation: TANH}\n", encoding="utf-8")
    raw = json.loads(cli("run", str(config), *TINY, "-f", "json").stdout)
    assert [run["scheme"] for run in raw["runs"]] == [
        "kaiming(mode='fan_out') + relu", "xavier(distribution='uniform') + silu",
        "kaiming(gain='tanh') + tanh"]
    assert raw["config"]["init"][0]["bias"] == {"name": "zeros"}
    assert raw["config"]["compare"][0]["activation"] == {"name": "silu"}
    assert raw["config"]["compare"][1]["init"]["gain"] == "tanh"


def test_a_cli_name_in_another_case_keeps_the_files_parameters(cli, tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text("init: [{name: kaiming, mode: fan_out}, lecun]\n", encoding="utf-8")
    raw = json.loads(cli("run", str(config), *TINY, "-i", "HE,Lecun", "-f", "json").stdout)
    assert [run["scheme"] for run in raw["runs"]] == ["kaiming(mode='fan_out') + relu",
                                                      "lecun + relu"]
