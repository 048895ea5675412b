"""Training probe: symmetry breaking as the maths says, with exact zeros where it says zero."""

from __future__ import annotations

import pytest
import torch

from actstat.config import load_config
from actstat.pipeline import profile


@pytest.fixture(scope="module")
def trained():
    config = load_config(None, {"init": ["zeros", "constant", "kaiming"], "activation": ["relu", "tanh"],
                                "model.depth": 5, "model.width": 32, "data.batch_size": 256,
                                "train.steps": 4, "train.lr": 0.5, "device": "cpu"})
    return {(run.init, run.act): run for run in profile(config).runs}


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_zeros_never_move_and_stay_identical(trained, act):
    train = trained["zeros", act].train
    assert train.steps == 4 and len(train.loss) == 5
    for layer in train.layers:
        assert layer.weight_delta == 0.0 and layer.bias_delta == 0.0  # exactly: dW = 0
        assert layer.weight_change is None  # relative to a zero norm: undefined
        assert layer.still_symmetric
    assert train.head_weight_delta == 0.0  # the last hidden activations are all 0
    assert train.head_bias_delta > 0  # only the head's bias learns
    assert all("grad_zero" in layer.flags for layer in trained["zeros", act].layers)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_constant_moves_but_stays_identical(trained, act):
    train = trained["constant", act].train
    assert all(layer.weight_delta > 0 and layer.still_symmetric for layer in train.layers)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_kaiming_units_move_apart_and_the_loss_falls(trained, act):
    train = trained["kaiming", act].train
    assert all(layer.weight_change > 0 and not layer.still_symmetric for layer in train.layers)
    assert train.loss[-1] < train.loss[0]


@pytest.mark.slow
def test_weight_change_is_the_relative_frobenius_distance():
    config = load_config(None, {"init": ["kaiming"], "model.depth": 2, "model.width": 8,
                                "data.batch_size": 64, "train.steps": 1, "train.lr": 0.1,
                                "device": "cpu", "dtype": "float64"})
    from actstat.data import load_batch
    from actstat.pipeline import profile_schemes

    batch = load_batch(config.data, seed=0, device=torch.device("cpu"), dtype=torch.float64,
                       num_classes=10)
    (run,) = profile_schemes(config, [(config.init[0], config.activation[0])], batch,
                             input_std=1.0)
    # one SGD step moves W by lr * dW: the measured gradient predicts the movement
    layer, moved = run.layers[0], run.train.layers[0]
    assert moved.weight_delta == pytest.approx(
        0.1 * layer.grad.weight_std * (layer.fan_in * layer.fan_out) ** 0.5, rel=0.05)


def test_steps_need_gradients():
    from actstat.errors import ConfigError

    with pytest.raises(ConfigError, match="train.steps needs gradients"):
        load_config(None, {"train.steps": 3, "grad": False})
