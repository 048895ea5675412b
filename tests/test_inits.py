"""Inits: each against its formula and against torch.nn.init, including the fan_in/fan_out trap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from actstat.build import reinitialise
from actstat.errors import ConfigError
from actstat.inits import BIAS_INITS, INITS, fans, make_bias_init, make_init
from models import Conv1D

OUT, IN = 300, 700  # nn.Linear(IN, OUT).weight has shape (OUT, IN): fan_in = IN


def draw(name: str, params: dict | None = None, act_gain: float = math.sqrt(2), seed: int = 0,
         shape=(OUT, IN)) -> torch.Tensor:
    weight = torch.empty(shape)
    make_init(name, params)(weight, act_gain, torch.Generator().manual_seed(seed))
    return weight


def torch_draw(fn, *args, seed: int = 0, shape=(OUT, IN), **kwargs) -> torch.Tensor:
    weight = torch.empty(shape)
    fn(weight, *args, generator=torch.Generator().manual_seed(seed), **kwargs)
    return weight


def variance(w: torch.Tensor) -> float:
    return float(np.var(w.double().numpy()))  # population variance around the sample mean


def test_fans_follow_nn_linear_layout():
    assert fans(nn.Linear(IN, OUT).weight) == (IN, OUT)


# expected Var(W) with fan_in = IN, fan_out = OUT (formulas in actstat/inits.py)
VARIANCES = [
    ("randn", {}, 1.0),
    ("zeros", {}, 0.0),
    ("constant", {"value": 0.3}, 0.0),
    ("uniform", {"low": -0.2, "high": 0.6}, 0.8**2 / 12),
    ("normal", {"std": 0.3}, 0.09),
    ("lecun", {}, 1 / IN),
    ("lecun", {"distribution": "uniform"}, 1 / IN),
    ("xavier", {}, 2 / (IN + OUT)),
    ("xavier", {"distribution": "uniform", "gain": 2.0}, 4 * 2 / (IN + OUT)),
    ("xavier", {"gain": "auto"}, 2 * 2 / (IN + OUT)),
    ("kaiming", {}, 2 / IN),
    ("kaiming", {"mode": "fan_out"}, 2 / OUT),
    ("kaiming", {"distribution": "uniform"}, 2 / IN),
    ("kaiming", {"gain": "tanh"}, (5 / 3) ** 2 / IN),
    ("kaiming", {"gain": 1.0}, 1 / IN),
    ("orthogonal", {}, OUT / (OUT * IN)),  # OUT orthonormal rows of length IN
    ("default", {}, 1 / (3 * IN)),
    ("trunc_normal", {}, 0.02**2 * 0.7737413),  # N(0, s²) cut at ±2s keeps 77.4 % of s²
]


@pytest.mark.parametrize("name, params, expected", VARIANCES,
                         ids=[f"{n}-{p}" for n, p, _ in VARIANCES])
def test_variance_matches_formula(name, params, expected):
    w = draw(name, params)
    assert variance(w) == pytest.approx(expected, rel=0.02, abs=1e-12)


@pytest.mark.parametrize("name", INITS)
def test_every_init_fills_every_entry_with_finite_values(name):
    w = torch.full((OUT, IN), float("nan"))
    make_init(name)(w, math.sqrt(2), torch.Generator().manual_seed(0))
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("name", INITS)
def test_every_init_is_seeded(name):
    assert torch.equal(draw(name, seed=5), draw(name, seed=5))
    if name not in ("zeros", "constant"):  # the seed is the one given, not a fixed one
        assert not torch.equal(draw(name, seed=5), draw(name, seed=6))


def test_constant_and_zeros_are_exact():
    assert torch.equal(draw("constant", {"value": 0.3}), torch.full((OUT, IN), 0.3))
    assert not draw("zeros").any()


def test_trunc_normal_is_truncated_at_two_std():
    w = draw("trunc_normal", {"std": 0.5})
    assert float(w.abs().max()) <= 1.0
    assert float(w.abs().max()) > 0.95


# bitwise the same draws as torch.nn.init's own functions on nn.Linear's layout
SAME_AS_TORCH = [
    ("kaiming", {}, nn.init.kaiming_normal_, {"nonlinearity": "relu"}),
    ("kaiming", {"mode": "fan_out"}, nn.init.kaiming_normal_,
     {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming", {"distribution": "uniform"}, nn.init.kaiming_uniform_, {"nonlinearity": "relu"}),
    ("kaiming", {"gain": "leaky_relu"}, nn.init.kaiming_normal_,
     {"a": 0.01, "nonlinearity": "leaky_relu"}),
    ("lecun", {}, nn.init.kaiming_normal_, {"nonlinearity": "linear"}),
    ("xavier", {}, nn.init.xavier_normal_, {}),
    ("xavier", {"distribution": "uniform"}, nn.init.xavier_uniform_, {}),
    ("xavier", {"gain": "tanh"}, nn.init.xavier_normal_, {"gain": 5 / 3}),
    ("orthogonal", {"gain": 2.0}, nn.init.orthogonal_, {"gain": 2.0}),
    ("default", {}, nn.init.kaiming_uniform_, {"a": math.sqrt(5)}),
    ("randn", {}, nn.init.normal_, {}),
]


@pytest.mark.parametrize("name, params, fn, kwargs", SAME_AS_TORCH,
                         ids=[f"{n}-{p}" for n, p, _, _ in SAME_AS_TORCH])
def test_draws_match_torch_nn_init(name, params, fn, kwargs):
    assert torch.allclose(draw(name, params), torch_draw(fn, **kwargs), rtol=1e-6, atol=0)


def test_default_is_nn_linears_own_reset():
    torch.manual_seed(3)  # the global generator, which nn.Linear's reset draws from
    layer = nn.Linear(IN, OUT)
    ours = draw("default", seed=3)
    assert torch.equal(ours, layer.weight.detach())
    assert float(ours.abs().max()) <= 1 / math.sqrt(IN)


def test_fan_mode_trap_on_a_hand_made_in_out_matrix():
    """A hand-made weight used as x @ W is stored (in, out): torch's fan_out *is* its fan-in.

    So the fast.ai lesson's kaiming_normal_(w, mode='fan_out') on an (in, out) matrix gives
    Var = 2/in, what actstat's default fan_in gives on nn.Linear's (out, in) weight; torch's
    fan_in mode on that matrix would silently use the number of outputs.
    """
    hand_made = torch_draw(nn.init.kaiming_normal_, shape=(IN, OUT), mode="fan_out",
                           nonlinearity="relu")
    assert variance(hand_made) == pytest.approx(2 / IN, rel=0.02)
    assert variance(draw("kaiming")) == pytest.approx(2 / IN, rel=0.02)
    wrong = torch_draw(nn.init.kaiming_normal_, shape=(IN, OUT), mode="fan_in",
                       nonlinearity="relu")
    assert variance(wrong) == pytest.approx(2 / OUT, rel=0.02)
    # and the signal: x @ W with the correct mode keeps E[relu(y)²] ≈ E[x²]
    x = torch.randn(2000, IN, generator=torch.Generator().manual_seed(1))
    kept = torch.relu(x @ hand_made).pow(2).mean() / x.pow(2).mean()
    assert float(kept) == pytest.approx(1.0, rel=0.05)


def test_kaiming_auto_gain_takes_the_leaky_slope():
    w = draw("kaiming", act_gain=math.sqrt(2 / (1 + 0.1**2)))
    assert variance(w) == pytest.approx(2 / (1 + 0.01) / IN, rel=0.02)


@pytest.mark.parametrize("params, message", [
    ({"gain": "nope"}, "gain must be a number, 'auto' or an activation name"),
    ({"gain": 0.0}, "gain must be a positive number"),
])
def test_bad_gain(params, message):
    with pytest.raises(ConfigError, match=message):
        make_init("kaiming", params)


BIAS_CASES = [
    ("zeros", {}, lambda b: not b.any()),
    ("constant", {"value": 0.25}, lambda b: torch.equal(b, torch.full_like(b, 0.25))),
    ("normal", {"std": 0.5}, lambda b: abs(variance(b) - 0.25) < 0.25 * 0.05),
    ("uniform", {"low": 0.0, "high": 1.0}, lambda b: float(b.min()) >= 0 and float(b.max()) <= 1),
    ("default", {}, lambda b: float(b.abs().max()) <= 1 / math.sqrt(IN)
     and abs(variance(b) - 1 / (3 * IN)) < 0.05 / (3 * IN)),
]


@pytest.mark.parametrize("name, params, check", BIAS_CASES, ids=[c[0] for c in BIAS_CASES])
def test_bias_inits(name, params, check):
    assert set(BIAS_INITS) == {c[0] for c in BIAS_CASES}
    bias = torch.full((20000,), float("nan"))
    make_bias_init(name, params)(bias, IN, torch.Generator().manual_seed(0))
    assert torch.isfinite(bias).all() and check(bias)


@pytest.mark.parametrize("name", sorted(INITS))
def test_reinitialise_draws_a_conv1d_as_the_linear_it_computes(name):
    """Hugging Face's Conv1D (GPT-2) computes x @ W + b with W stored (in, out): --init draws its
    transpose exactly as it draws the nn.Linear(in, out) that computes the same map, fans and
    all (the bias's bound too: `default` is U(±1/√fan_in))."""
    conv, linear = nn.Sequential(Conv1D(96, 64)), nn.Sequential(nn.Linear(64, 96))
    for model in (conv, linear):
        assert reinitialise(model, make_init(name), make_bias_init("default"), seed=3) == 1
    assert torch.equal(conv[0].weight.T, linear[0].weight)
    assert torch.equal(conv[0].bias, linear[0].bias)


def test_reinitialise_gives_a_conv1d_kaimings_std_from_its_fan_in():
    model = nn.Sequential(Conv1D(96, 64))  # 64 inputs, 96 outputs
    reinitialise(model, make_init("kaiming"), make_bias_init("zeros"), seed=0)
    std = float(np.std(model[0].weight.detach().double().numpy()))
    assert std == pytest.approx(math.sqrt(2 / 64), rel=0.05)  # 6144 draws: 1% standard error
