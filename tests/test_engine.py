"""One measurement engine: every command measures through actstat/capture.py's Probe, and the same
network on the same batch gives the same rows and numbers in `run`, `train`'s step 0 and
`actstat.profile`, for every registered activation, parameters included."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import actstat
from actstat.activations import ACTIVATIONS
from actstat.build import initialised
from actstat.config import load_config
from actstat.data import load_batch
from actstat.pipeline import profile
from actstat.plan import schemes
from actstat.training import watch_report

PACKAGE = Path(actstat.__file__).parent
HOOKS = re.compile(r"register_(forward_hook|forward_pre_hook|full_backward_hook|"
                   r"full_backward_pre_hook|backward_hook|hook)\(")


def test_only_the_engine_registers_hooks():
    """No module but the engine (capture.py) hooks a model or a tensor: lsuv's step, training's
    recorder and the built-in MLP all go through it."""
    hooking = sorted(path.name for path in PACKAGE.glob("*.py") if HOOKS.search(path.read_text()))
    assert hooking == ["capture.py"]


# every registered activation at its defaults, and with parameters that move its floor, its
# slope or its clamp (the lesson's relu - 0.5 among them)
SPECS = [{"name": name} for name in ACTIVATIONS] + [
    {"name": "general_relu", "subtract": 0.5},
    {"name": "general_relu", "leak": 0.1, "subtract": 0.4},
    {"name": "general_relu", "subtract": 0.2, "clamp_max": 0.6},
    {"name": "leaky_relu", "negative_slope": 0.3},
    {"name": "elu", "alpha": 0.5},
    {"name": "softplus", "beta": 3.0},
    {"name": "gelu", "approximate": "tanh"},
]
BATCH = 256


def _config(spec: dict):
    # gaussian data: the pool training draws from is the batch `run` measures, and a training
    # mini-batch of all of it is that batch in another order (the statistics do not depend on
    # the order); float64, so that sums in another order agree to 1e-9
    return load_config(None, {"init": ["kaiming"], "activation": [spec], "model.depth": 4,
                              "model.width": 24, "data.source": "gaussian",
                              "data.batch_size": BATCH, "train.batch_size": BATCH,
                              "train.steps": 1, "device": "cpu", "dtype": "float64",
                              "theory": False})


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_run_train_step_zero_and_profile_give_the_same_rows_and_numbers(spec):
    config = _config(spec)
    ran = profile(config).runs[0]
    trained = watch_report(config).runs[0].trajectory
    init, act = schemes(config)[0]
    cpu = torch.device("cpu")
    batch = load_batch(config.data, seed=config.seed, device=cpu, dtype=torch.float64,
                       num_classes=config.model.num_classes)
    model = initialised(config, init, act, cpu, torch.float64, batch.inputs.shape[1])
    api = actstat.profile(model, batch.inputs, batch.labels).runs[0]

    # the same rows: the hidden layers, then the head, in all three
    assert [layer.name for layer in ran.layers] == [layer.name for layer in api.layers] == [
        "0", "2", "4", "6", "8"]
    assert [layer.name for layer in trained.layers] == ["1", "2", "3", "4", "head"]
    assert ran.verdict == api.verdict and ran.loss == pytest.approx(api.loss, rel=1e-12)
    assert trained.loss[0] == pytest.approx(ran.loss, rel=1e-9)
    for row, other, moved in zip(ran.layers, api.layers, trained.layers, strict=True):
        for key in ("mean", "std", "min", "max", "near_zero", "dead", "saturated"):
            assert _same(getattr(row.post, key), getattr(other.post, key)), (row.name, key)
        assert row.flags == other.flags, row.name
        assert _same(row.grad.std, other.grad.std) and _same(row.grad.weight_std,
                                                             other.grad.weight_std), row.name
        # train's step 0: the row's output, and the gradient at its first tensor
        assert _same(moved.mean[0], row.post.mean) and _same(moved.std[0], row.post.std)
        assert _same(moved.near_zero[0], row.post.near_zero), row.name
        assert _same(moved.grad_std[0], row.grad.std), row.name
        assert (moved.dead is None) == (row.post.dead is None), row.name
        if moved.dead is not None:
            assert _same(moved.dead[0], row.post.dead), row.name


def test_relu_minus_half_dies_at_minus_half_in_run_and_in_train():
    """The lesson's activation: a dead unit of relu(x) - 0.5 outputs -0.5 for every sample.
    Deep enough with a negative bias, units die; `run` and `train`'s step 0 count the same."""
    config = load_config(None, {"init": [{"name": "kaiming", "bias": {"name": "constant",
                                                                      "value": -0.5}}],
                                "activation": [{"name": "general_relu", "subtract": 0.5}],
                                "model.depth": 6, "model.width": 16, "data.source": "gaussian",
                                "data.batch_size": 64, "train.batch_size": 64,
                                "train.steps": 1, "device": "cpu", "dtype": "float64",
                                "theory": False})
    ran = profile(config).runs[0]
    trained = watch_report(config).runs[0].trajectory
    hidden = [layer.post.dead for layer in ran.layers[:-1]]
    assert max(hidden) > 0.2, hidden  # units do die
    assert [layer.dead[0] for layer in trained.layers[:-1]] == pytest.approx(hidden)
    assert all(layer.post.min == pytest.approx(-0.5) for layer in ran.layers[:-1])
