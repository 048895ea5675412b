"""Mean-field theory: quadrature against fine integrals, the known phase points, and measurement."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from actstat.activations import ACTIVATIONS, make_activation
from actstat.config import load_config
from actstat.pipeline import profile
from actstat.theory import Moments, phase
from reference import NUMPY, trapezoid

CASES = [(name, {}) for name in ACTIVATIONS] + [
    ("general_relu", {"subtract": 0.5, "clamp_max": 1.0}),
    ("general_relu", {"leak": 0.1, "subtract": 0.3}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {"alpha": 2.0}),
    ("softplus", {"beta": 2.0}),
    ("gelu", {"approximate": "tanh"}),
]


def reference_phi(name: str, params: dict):
    if name == "general_relu":
        p = {"leak": 0.0, "subtract": 0.0, "clamp_max": None, **params}
        return lambda y: np.minimum(np.where(y > 0, y, p["leak"] * y) - p["subtract"],
                                    np.inf if p["clamp_max"] is None else p["clamp_max"])
    if name == "leaky_relu":
        return lambda y: np.where(y > 0, y, params.get("negative_slope", 0.01) * y)
    if name == "elu":
        alpha = params.get("alpha", 1.0)
        return lambda y: np.where(y > 0, y, alpha * np.expm1(np.minimum(y, 0.0)))
    if name == "softplus":
        beta = params.get("beta", 1.0)
        return lambda y: np.logaddexp(0.0, beta * y) / beta
    if name == "gelu" and params.get("approximate") == "tanh":
        return lambda y: 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
    return NUMPY[name]


def fine_moments(phi, q: float, kinks: tuple[float, ...] = ()) -> tuple[float, float, float]:
    """E[φ], E[φ²], E[φ'²] for y ~ N(0, q) on about 500,000 points over ±12√q, with φ's kinks
    as grid points: trapezoid for φ and φ², the exact slope of each interval for φ'."""
    s = math.sqrt(q)
    edges = sorted({-12 * s, 12 * s, *(k for k in kinks if abs(k) < 12 * s)})
    pieces = [np.linspace(a, b, max(3, int(500_000 * (b - a) / (24 * s))))
              for a, b in zip(edges[:-1], edges[1:])]
    y = np.unique(np.concatenate(pieces))
    density = lambda t: np.exp(-0.5 * (t / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    values = phi(y)
    mid = (y[:-1] + y[1:]) / 2
    slopes = np.diff(values) / np.diff(y)
    return (float(trapezoid(values * density(y), y)),
            float(trapezoid(values**2 * density(y), y)),
            float(np.sum(slopes**2 * density(mid) * np.diff(y))))


@pytest.mark.slow  # fine-grid integrals: seconds in all on 2 cores
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the reference's exp at |y| ~ 1e3
@pytest.mark.parametrize("q", [1e-4, 0.05, 1.0, 7.0, 100.0, 1e4])
@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}{p or ''}" for n, p in CASES])
def test_moments_match_a_fine_integral(name, params, q):
    activation = make_activation(name, params)
    got = Moments(activation)(q)
    want = fine_moments(reference_phi(name, params), q, activation.kinks)
    scale = math.sqrt(want[1]) if want[1] > 0 else 1.0
    assert got[0] == pytest.approx(want[0], rel=1e-4, abs=1e-6 * scale)  # means can be ~0
    assert got[1] == pytest.approx(want[1], rel=1e-4)
    assert got[2] == pytest.approx(want[2], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("name, params", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                          ("general_relu", {"leak": 0.1, "subtract": 0.5}),
                                          ("identity", {})])
@pytest.mark.parametrize("q", [0.01, 1.0, 300.0])
def test_closed_forms_agree_with_the_kink_split_quadrature(name, params, q):
    activation = make_activation(name, params)
    numeric = Moments(dataclasses.replace(activation, gaussian=None))(q)
    assert activation.gaussian(q) == pytest.approx(numeric, rel=1e-9, abs=1e-12)


def test_relu_closed_form():
    mean, square, slope = make_activation("relu").gaussian(4.0)
    assert (mean, square, slope) == pytest.approx((2 / math.sqrt(2 * math.pi), 2.0, 0.5))


@pytest.mark.parametrize("name, sigma_w2, expect_phase, chi1, q_star", [
    ("relu", 2.0, "critical", 1.0, 1.0),  # σ_w² = 2, σ_b = 0: every q is a fixed point
    ("relu", 1 / 3, "ordered", 1 / 6, 0.0),  # PyTorch's default init
    ("tanh", 1.0, "critical", 1.0, 0.0),  # q* = 0, χ₁ = φ'(0)² σ_w² = 1
    ("tanh", 25 / 9, "chaotic", 1.21, None),  # gain 5/3: mildly chaotic
    ("tanh", 100.0, "chaotic", 5.55, None),  # N(0, 1) weights at fan-in 100: deeply chaotic
])
def test_known_phase_points(name, sigma_w2, expect_phase, chi1, q_star):
    found = phase(make_activation(name), sigma_w2, 0.0, 1.0)
    assert found.phase == expect_phase
    assert found.chi1 == pytest.approx(chi1, rel=0.01)
    if q_star is not None:
        assert found.q_star == pytest.approx(q_star, abs=1e-9)
    else:
        assert found.q_star > 0


def test_no_finite_fixed_point_is_said():
    found = phase(make_activation("relu"), 2.5, 0.0, 1.0)
    assert found.q_star is None and found.phase == "chaotic"
    assert found.chi1 == pytest.approx(1.25)


def plain_iteration(length_map, q: float, steps: int) -> float:
    for _ in range(steps):
        q = length_map(q)
    return q


@pytest.mark.slow
@pytest.mark.parametrize("name, params, sigma_w2, sigma_b2", [
    ("tanh", {}, 1.01, 0.0),  # slightly chaotic: a small positive q*, approached at rate 0.98
    ("tanh", {}, 1.5, 0.05),
    ("tanh", {}, 0.8, 0.01),
    ("selu", {}, 1.2, 0.0),
    ("general_relu", {"subtract": 0.5}, 1.5, 0.0),  # E[φ²] is not monotone in q
    ("sigmoid", {}, 4.0, 0.1),
    ("softplus", {}, 1.0, 0.0),
])
def test_fixed_point_is_where_plain_iteration_ends(name, params, sigma_w2, sigma_b2):
    """The accelerated solver lands on the fixed point that iterating the map reaches."""
    moments = Moments(make_activation(name, params))

    def length_map(q):
        return sigma_w2 * moments(q, slope=False)[1] + sigma_b2

    found = phase(make_activation(name, params), sigma_w2, sigma_b2, 2.0)
    expected = plain_iteration(length_map, 2.0, 5_000)
    assert found.q_star == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert length_map(found.q_star) == pytest.approx(found.q_star, rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_slow_approach_to_zero_still_reaches_zero():
    """tanh at σ_w² = 1 creeps onto q* = 0 as q_l ≈ 1/(2l): no iteration budget gets there
    plainly, and the answer is still exactly 0 (χ₁ = 1: critical)."""
    found = phase(make_activation("tanh"), 1.0, 0.0, 5.0)
    assert (found.q_star, found.phase) == (0.0, "critical")


def test_selu_self_normalising_fixed_point():
    found = phase(make_activation("selu"), 1.0, 0.0, 3.0)
    assert found.q_star == pytest.approx(1.0, abs=1e-6)
    mean, square, _ = Moments(make_activation("selu"))(found.q_star)
    assert (mean, square - mean**2) == pytest.approx((0.0, 1.0), abs=1e-6)


@pytest.fixture(scope="module")
def gaussian_wide():
    """The issue's validation setting: Gaussian input, width 1024, depth 10."""
    config = load_config(None, {
        "init": [], "activation": [], "compare": [
            {"init": "kaiming", "activation": "relu"}, {"init": "xavier", "activation": "tanh"},
            {"init": "lecun", "activation": "selu"}, {"init": "lecun", "activation": "gelu"}],
        "model.depth": 10, "model.width": 1024, "data.source": "gaussian",
        "data.input_size": 1024, "device": "cpu", "grad": False})
    return {run.scheme: run for run in profile(config).runs}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["kaiming + relu", "xavier + tanh", "lecun + selu",
                                    "lecun + gelu"])
def test_measured_post_std_within_five_percent_of_expected(gaussian_wide, scheme):
    run = gaussian_wide[scheme]
    assert run.layers[-1].post.expected_std is None  # the head: no wide-limit expectation
    for layer in run.layers[:-1]:
        assert layer.post.std == pytest.approx(layer.post.expected_std, rel=0.05), layer.index


@pytest.mark.slow
def test_selu_network_sits_at_mean_0_std_1(gaussian_wide):
    last = gaussian_wide["lecun + selu"].layers[-2]  # the last hidden layer (then the head)
    assert last.post.expected_mean == pytest.approx(0.0, abs=0.02)
    assert last.post.expected_std == pytest.approx(1.0, abs=0.02)
    assert (last.post.mean, last.post.std) == pytest.approx((0.0, 1.0), abs=0.05)


@pytest.mark.slow
def test_phases_of_the_classic_schemes():
    config = load_config(None, {"init": ["kaiming", "default", "randn"],
                                "activation": ["relu", "tanh"], "model.depth": 3,
                                "device": "cpu"})
    phases = {(run.init, run.act): run.theory.phase for run in profile(config).runs}
    assert phases["kaiming", "relu"] == "critical"
    assert phases["default", "relu"] == "ordered"
    assert phases["randn", "tanh"] == "chaotic"
    assert phases["kaiming", "tanh"] == "chaotic"  # gain 5/3: χ₁ ≈ 1.2


@pytest.mark.slow
def test_theory_in_json_and_no_theory(cli):
    small = ["--depth", "3", "--width", "16", "--batch-size", "64", "--device", "cpu"]
    run = json.loads(cli("run", *small, "-f", "json").stdout)["runs"][0]
    assert set(run["theory"]) == {"chi1", "q_star", "phase"}
    layer = run["layers"][0]
    assert layer["pre"]["expected_std"] > 0 and layer["post"]["expected_std"] > 0
    assert "expected_mean" in layer["post"]
    off = json.loads(cli("run", *small, "--no-theory", "-f", "json").stdout)["runs"][0]
    assert off["theory"] is None and off["layers"][0]["post"]["expected_std"] is None
    assert "exp std" not in cli("run", *small, "--no-theory").stdout
    assert "exp std" in cli("run", *small).stdout
