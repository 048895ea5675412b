"""lsuv (Mishkin & Matas 2016): the algorithm against a NumPy re-implementation, what it leaves
on every model the pipeline builds, its report records, and its warnings and errors through
the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from actstat.activations import ACTIVATIONS, make_activation
from actstat.build import build_blocks
from actstat.config import load_config
from actstat.errors import InitError
from actstat.inits import DataInit, make_bias_init, make_init
from actstat.lsuv import scale_on_batch
from actstat.model import build_mlp, initialise
from actstat.pipeline import profile
from actstat.render import lsuv_line, tables
from actstat.report import Report, read_report
from conftest import ROOT
from models import gaussian
from test_layout import printed

TINY = ["--depth", "3", "--width", "16", "--batch-size", "64", "--device", "cpu"]
FEATURES, WIDTHS, CLASSES = 12, [20, 20, 16, 20], 5


def _mlp(act: str, *, bias: bool = True, params: dict | None = None, seed: int = 3):
    """The built-in MLP with lsuv's orthogonal start, in float64 (not yet scaled)."""
    activation = make_activation(act)
    init = make_init("lsuv", params)
    model = build_mlp(in_features=FEATURES, widths=WIDTHS, num_classes=CLASSES, bias=bias,
                      activation=activation)
    model = initialise(model, init, make_bias_init("zeros"), act_gain=activation.gain, seed=seed,
                       device=torch.device("cpu"), dtype=torch.float64)
    return model, init


def _numpy_lsuv(weights, biases, x, act, tolerance, max_iterations):
    """Algorithm 1 as the paper reads: for each layer, a fresh forward pass from the input per
    iteration, then W / std and (b - each unit's mean) / std until |std - 1| < tol (and
    |mean| < tol with a bias)."""
    weights = [w.copy() for w in weights]
    biases = [None if b is None else b.copy() for b in biases]
    records = []
    for k in range(len(weights)):
        updates = 0
        while True:
            h = x
            for j in range(k):
                h = act(h @ weights[j].T + (0 if biases[j] is None else biases[j]))
            y = h @ weights[k].T + (0 if biases[k] is None else biases[k])
            std, mean = y.std(), y.mean()
            done = abs(std - 1) < tolerance and (biases[k] is None or abs(mean) < tolerance)
            if done or updates == max_iterations:
                records.append((updates, std, mean, bool(done)))
                break
            if biases[k] is not None:
                biases[k] = (biases[k] - y.mean(axis=0)) / std
            weights[k] = weights[k] / std
            updates += 1
    return weights, biases, records


NUMPY_ACTS = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}


@pytest.mark.parametrize("act", sorted(NUMPY_ACTS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("params", [{}, {"tolerance": 0.01, "max_iterations": 3}])
def test_lsuv_gives_the_weights_of_a_numpy_reimplementation(act, bias, params):
    model, init = _mlp(act, bias=bias, params=params)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    start_w = [m.weight.detach().numpy().copy() for m in linears]
    start_b = [None if m.bias is None else m.bias.detach().numpy().copy() for m in linears]
    x = gaussian(256, FEATURES, seed=4, dtype=torch.float64) * 3 + 0.5  # off-centre, wide
    records = scale_on_batch(model, x, init)
    weights, biases, expected = _numpy_lsuv(start_w, start_b, x.numpy(), NUMPY_ACTS[act],
                                            init.tolerance, init.max_iterations)
    assert [r.name for r in records] == [str(i) for i in range(0, 2 * len(WIDTHS) + 1, 2)]
    for linear, w, b in zip(linears, weights, biases, strict=True):
        np.testing.assert_allclose(linear.weight.detach().numpy(), w, rtol=1e-10, atol=1e-12)
        if b is not None:
            np.testing.assert_allclose(linear.bias.detach().numpy(), b, rtol=1e-10, atol=1e-12)
    for record, (updates, std, mean, done) in zip(records, expected, strict=True):
        assert (record.iterations, record.converged) == (updates, done)
        assert record.std == pytest.approx(std, rel=1e-10)
        assert record.mean == pytest.approx(mean, rel=1e-8, abs=1e-12)
    # the input is off-centre and 3x wide: the first layer needed at least one update
    assert records[0].iterations >= 1


def test_the_start_is_orthogonal_with_gain_one():
    init = make_init("lsuv")
    assert isinstance(init, DataInit)
    square, wide = torch.empty(32, 32), torch.empty(16, 40)
    init(square, 2.0 ** 0.5, torch.Generator().manual_seed(0))  # the act's gain is not used
    init(wide, 2.0 ** 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(square @ square.T, torch.eye(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(wide @ wide.T, torch.eye(16), atol=1e-5, rtol=0)  # rows


def _outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every weight layer's output on `x`, by module name, through plain forward hooks."""
    found: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda m, a, out: found.setdefault(names[m], out.detach()))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return found


def _assert_unit_std_zero_mean(outputs: dict[str, torch.Tensor], records, tolerance: float):
    assert [r.name for r in records] == list(outputs)
    for record in records:
        out = outputs[record.name].double().numpy()
        assert abs(out.std() - 1) < tolerance and abs(out.mean()) < tolerance, record
        assert record.converged
        assert record.std == pytest.approx(out.std(), rel=1e-6)


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_every_weight_layer_of_a_residual_model_ends_at_std_one_and_mean_zero(norm):
    config = load_config(None, {"init": ["lsuv"], "model.block": "residual", "model.norm": norm,
                                "model.depth": 3, "model.width": 24, "device": "cpu"})
    activation = make_activation("relu")
    init = make_init("lsuv")
    model = initialise(build_blocks(config, activation, FEATURES, init), init,
                       make_bias_init("zeros"), act_gain=activation.gain, seed=0,
                       device=torch.device("cpu"), dtype=torch.float32)
    x = gaussian(200, FEATURES, seed=2) * 2
    records = scale_on_batch(model, x, init)
    assert [r.name for r in records][:3] == ["inp", "blocks.0.branch.fc1", "blocks.0.branch.fc2"]
    assert records[-1].name == "head"
    _assert_unit_std_zero_mean(_outputs(model, x), records, 0.1)


def test_a_conv_net_in_train_mode_is_scaled_as_it_is_measured_and_its_buffers_kept():
    """The unit of a feature map is its channel: the bias re-centres each channel's mean. The
    pass runs in the model's own mode (train: BatchNorm on the batch) and leaves BatchNorm's
    running statistics as they were."""
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    init = make_init("lsuv", {"tolerance": 0.02})
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init(m.weight, 1.0, g)
            nn.init.zeros_(m.bias)
    x = gaussian(64, 1, 10, 10, seed=5) + 1.0
    running = model[1].running_mean.clone()
    records = scale_on_batch(model, x, init)
    assert model.training and torch.equal(model[1].running_mean, running)
    outputs = _outputs(model, x)  # in train mode, as the probe measures it
    _assert_unit_std_zero_mean(outputs, records, 0.02)
    channel_means = outputs["3"].double().mean(dim=(0, 2, 3))
    assert channel_means.abs().max() < 1e-6  # every channel centred, not only their average


def test_zero_spread_is_an_init_error_naming_the_layer():
    model, init = _mlp("relu")
    with pytest.raises(InitError, match=r"weight layer 1 \(0, Linear\).*std 0"):
        scale_on_batch(model, torch.zeros(10, FEATURES, dtype=torch.float64), init)


def test_a_nonfinite_layer_is_an_init_error():
    model, init = _mlp("tanh")
    x = gaussian(10, FEATURES, dtype=torch.float64)
    x[3, 2] = float("inf")
    with pytest.raises(InitError, match="non-finite"):
        scale_on_batch(model, x, init)


def test_lsuv_is_seeded():
    def weights(seed):
        model, init = _mlp("tanh", seed=seed)
        scale_on_batch(model, gaussian(64, FEATURES, dtype=torch.float64), init, seed=seed)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))


# ---- the pipeline and the CLI -----------------------------------------------------------------


def test_run_records_every_weight_layer_and_no_mean_field_theory(cli, tmp_path):
    out = tmp_path / "r.json"
    cli("run", "--init", "lsuv", "--act", "relu", *TINY, "--format", "json", "--output",
        str(out))
    report = read_report(out)
    (run,) = report.runs
    assert [layer.name for layer in run.lsuv] == ["0", "2", "4", "6"]  # the head too
    assert all(layer.converged and abs(layer.std - 1) < 0.1 for layer in run.lsuv)
    # the table's pre std of each hidden layer, and the head's output std, is the std lsuv
    # left (one pass, same batch)
    assert len(run.layers) == len(run.lsuv) and run.layers[-1].pre is None
    for layer, scaled in zip(run.layers, run.lsuv):
        assert (layer.pre or layer.post).std == pytest.approx(scaled.std, rel=1e-5)
    assert run.theory is None and run.layers[0].pre.expected_std is None
    assert run.init_params["tolerance"] == 0.1 and run.init_params["max_iterations"] == 10


def test_lsuv_records_round_trip_through_json(tmp_path):
    config = load_config(None, {"init": ["lsuv", "kaiming"], "model.depth": 2,
                                "model.width": 8, "data.batch_size": 32, "device": "cpu"})
    report = profile(config)
    path = report.save(tmp_path / "r.json")
    back = read_report(path)
    assert back.runs[0].lsuv == report.runs[0].lsuv and back.runs[0].lsuv is not None
    assert back.runs[1].lsuv is None
    raw = json.loads(path.read_text())
    assert set(raw["runs"][0]["lsuv"][0]) == {"name", "iterations", "std", "mean", "converged"}
    assert raw["runs"][1]["lsuv"] is None
    # a report without the key (written before lsuv) still loads
    del raw["runs"][0]["lsuv"]
    assert Report.from_dict(raw).runs[0].lsuv is None
    raw["runs"][0]["lsuv"] = [{"name": "0", "iterations": -1, "std": 1.0, "mean": 0.0,
                               "converged": True}]
    with pytest.raises(Exception, match=r"runs\[0\]\.lsuv\[0\]\.iterations"):
        Report.from_dict(raw, "r.json")


def test_compare_stacks_lsuv_and_gives_the_numbers_of_a_separate_run(cli, tmp_path):
    common = [*TINY, "--dtype", "float64", "--format", "json", "--output"]
    cli("compare", "--init", "kaiming,lsuv", "--act", "relu,tanh", *common,
        str(tmp_path / "c.json"))
    cli("run", "--init", "lsuv", "--act", "tanh", *common, str(tmp_path / "r.json"))
    compared = {run.scheme: run for run in read_report(tmp_path / "c.json").runs}
    alone = read_report(tmp_path / "r.json").runs[0]
    stacked = compared["lsuv + tanh"]
    assert stacked.lsuv == alone.lsuv
    for a, b in zip(stacked.layers, alone.layers, strict=True):
        for side in ("pre", "post", "grad"):
            if getattr(b, side) is None:  # the head's row has no pre
                assert getattr(a, side) is None
                continue
            for key, value in vars(getattr(b, side)).items():
                if isinstance(value, float):
                    assert getattr(getattr(a, side), key) == pytest.approx(value, rel=1e-9,
                                                                         abs=1e-15), key
    assert compared["kaiming + relu"].lsuv is None


def test_a_factory_model_is_scaled_layer_by_layer(cli, tmp_path):
    out = tmp_path / "m.json"
    cli("run", "--model", f"{ROOT / 'examples' / 'nets.py'}:make_cnn", "--init", "lsuv",
        "--batch-size", "64", "--device", "cpu", "--format", "json", "--output", str(out))
    (run,) = read_report(out).runs
    assert [layer.name for layer in run.lsuv] == ["0", "4", "9"]
    assert all(layer.converged for layer in run.lsuv)
    rows = {layer.name: layer for layer in run.layers}
    assert rows["9"].post.std == pytest.approx(run.lsuv[-1].std, rel=1e-5)


def test_no_convergence_warns_names_the_layers_and_runs_on(cli, tmp_path):
    config = tmp_path / "strict.yaml"
    config.write_text("init: {name: lsuv, tolerance: 1.0e-9, max_iterations: 1}\n")
    result = cli("run", str(config), *TINY, "--format", "json")
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1, result.stderr
    assert warning[0].startswith("actstat: warning: lsuv(tolerance=1e-09, max_iterations=1) "
                                 "+ relu: 4 of 4 weight layers not within 1e-09 of std 1")
    assert "layer 1 (std " in warning[0] and "head (std " in warning[0]
    run = json.loads(result.stdout)["runs"][0]
    assert [layer["converged"] for layer in run["lsuv"]] == [False] * 4
    assert [layer["iterations"] for layer in run["lsuv"]] == [1] * 4
    assert cli("run", str(config), *TINY, "--format", "json", "--quiet").stderr == ""


def test_lsuv_on_zero_input_is_one_line_and_exit_2(cli, tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((100, 20), dtype=np.float32))
    config = tmp_path / "zeros.yaml"
    config.write_text("data: {source: zeros.npy, normalize: none}\n")
    result = cli("run", str(config), "--init", "lsuv", *TINY, code=2)
    assert result.stderr.startswith("actstat: error: lsuv: weight layer 1 (0, Linear) gives the "
                                    "same value for every input of the batch (std 0)")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_lsuv_refuses_a_bias_init_and_a_misspelt_name_is_helped(cli, tmp_path):
    config = tmp_path / "b.yaml"
    config.write_text("init: {name: lsuv, bias: normal}\n")
    result = cli("run", str(config), *TINY, code=2)
    assert "lsuv re-centres every bias on the batch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("run", "--init", "lsvu", *TINY, code=2)
    assert "unknown init 'lsvu' (did you mean 'lsuv'?)" in result.stderr
    config.write_text("init: {name: lsuv, max_iterations: 0}\n")
    assert "max_iterations" in cli("run", str(config), *TINY, code=2).stderr


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_lsuv_line_fits_the_terminal(width):
    config = load_config(None, {"init": [{"name": "lsuv", "tolerance": 1e-9,
                                          "max_iterations": 1}],
                                "model.depth": 12, "model.width": 8, "data.batch_size": 32,
                                "device": "cpu", "grad": False})
    report = profile(config)
    line = lsuv_line(report.runs[0])
    assert line is not None and "and 7 more" in line  # 13 layers missed; 6 are named
    text = printed(tables(report, width), width)
    assert all(len(row) <= width for row in text.splitlines())
    assert "lsuv: 13 of 13 weight layers" in text


@pytest.mark.slow
def test_lsuv_with_every_activation_scales_every_layer_and_gives_complete_rows():
    """tests/test_analysis.py runs every per-weight init with every activation; lsuv, which
    needs the batch, is run with every activation here."""
    config = load_config(None, {"init": ["lsuv"], "activation": list(ACTIVATIONS),
                                "model.depth": 3, "model.width": 16, "data.batch_size": 64,
                                "device": "cpu"})
    for run in profile(config).runs:
        assert [layer.index for layer in run.layers] == [1, 2, 3, 4]  # the head is row 4
        assert [layer.name for layer in run.lsuv] == ["0", "2", "4", "6"], run.scheme
        assert all(layer.converged for layer in run.lsuv), run.scheme
        for layer, scaled in zip(run.layers, run.lsuv, strict=True):
            # identity hands the Linear's output on: that row's one tensor is the Linear's
            assert (layer.pre or layer.post).std == pytest.approx(scaled.std, rel=1e-4), \
                run.scheme


def test_markdown_and_the_table_say_what_lsuv_reached(cli):
    markdown = cli("run", "--init", "lsuv", *TINY, "--format", "markdown").stdout
    assert "**LSUV:** 4 weight layers scaled to std " in markdown
    table = cli("run", "--init", "lsuv", *TINY).stdout
    line = [row for row in table.splitlines() if row.startswith("lsuv: ")]
    assert len(line) == 1 and "4 weight layers scaled to std " in line[0], table
    assert "(tolerance 0.1)" in line[0]
