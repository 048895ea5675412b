"""Activations: each module against a NumPy formula; gains; dead and saturation rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from actstat.activations import ACTIVATIONS, make_activation, second_moment_gain
from reference import NUMPY, trapezoid


def test_numpy_table_covers_the_registry():
    assert set(NUMPY) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_module_matches_numpy_formula(name):
    x = np.linspace(-6, 6, 1201)
    module = make_activation(name).module()
    got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, NUMPY[name](x), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_each_layer_gets_its_own_module(name):
    activation = make_activation(name)
    assert activation.module() is not activation.module()


TORCH_GAINS = {"relu": ("relu", None), "leaky_relu": ("leaky_relu", 0.01),
               "general_relu": ("relu", None), "tanh": ("tanh", None),
               "sigmoid": ("sigmoid", None), "selu": ("selu", None),
               "identity": ("linear", None)}


@pytest.mark.parametrize("name", TORCH_GAINS)
def test_gain_is_torchs_where_torch_has_one(name):
    nonlinearity, param = TORCH_GAINS[name]
    expected = nn.init.calculate_gain(nonlinearity, param)
    assert make_activation(name).gain == pytest.approx(expected, rel=1e-12)


def test_general_relu_gain_follows_its_leak():
    expected = nn.init.calculate_gain("leaky_relu", 0.1)
    assert make_activation("general_relu", {"leak": 0.1}).gain == pytest.approx(expected)


def fine_grid_second_moment(fn) -> float:
    """E[φ(z)²], z ~ N(0, 1), by a 2-million-point trapezoid rule on [-12, 12]."""
    z = np.linspace(-12, 12, 2_000_001)
    density = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return float(trapezoid(fn(z) ** 2 * density, z))


@pytest.mark.slow  # fine-grid integrals: seconds in all on 2 cores
@pytest.mark.parametrize("name", ["gelu", "silu", "elu", "softplus", "mish"])
def test_second_moment_gain_where_torch_has_none(name):
    expected = 1 / math.sqrt(fine_grid_second_moment(NUMPY[name]))
    assert make_activation(name).gain == pytest.approx(expected, rel=1e-5)


def test_second_moment_rule_gives_torchs_relu_gain():
    # E[relu(z)²] = 1/2 exactly, so the rule reproduces √2
    assert second_moment_gain(nn.ReLU()) == pytest.approx(math.sqrt(2), rel=1e-3)


def test_general_relu_subtract_leak_and_clamp():
    module = make_activation("general_relu", {"leak": 0.1, "subtract": 0.5,
                                              "clamp_max": 2.0}).module()
    x = torch.tensor([-2.0, 0.0, 1.0, 5.0])
    assert torch.allclose(module(x), torch.tensor([-0.7, -0.5, 0.5, 2.0]))


@pytest.mark.parametrize("name, params, edges", [
    ("tanh", {}, (-0.97, 0.97)),
    ("sigmoid", {}, (0.015, 0.985)),
    ("elu", {"alpha": 2.0}, (-1.94, None)),
    ("softplus", {"beta": 2.0}, (0.015, None)),
    ("general_relu", {"clamp_max": 6.0}, (None, 6.0)),
    ("relu", {}, None),
    ("gelu", {}, None),
])
def test_saturation_edges(name, params, edges):
    got = make_activation(name, params).saturation_edges(0.97)
    if edges is None:
        assert got is None
    else:
        assert got == pytest.approx(edges)


def test_only_flat_region_activations_can_die():
    can_die = {n for n in ACTIVATIONS if make_activation(n).dead_below is not None}
    assert can_die == {"relu", "general_relu"}
    assert make_activation("general_relu", {"leak": 0.1}).dead_below is None
