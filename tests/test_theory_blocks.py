"""Mean-field expectations beside the measurement for the built-in residual and normed models:
every row but the head gets one, a wide model's measurement agrees with it, and closed forms
hold where they exist."""

from __future__ import annotations

import json
import math

import pytest


def _config(tmp_path, act: str = "relu", init: str = "kaiming", **model) -> str:
    keys = {"width": 1000, "depth": 3, **model}
    lines = ["model:"] + [f"  {k}: {json.dumps(v)}" for k, v in keys.items()] + [
        "data: {source: gaussian, batch_size: 500}", "device: cpu", "seed: 5", "grad: false",
        f"init: {init}", f"activation: {act}"]
    path = tmp_path / "net.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _layers(cli, config: str, *args: str) -> dict[str, dict]:
    (run,) = json.loads(cli("run", config, "-q", "-f", "json", *args).stdout)["runs"]
    return {layer["name"]: layer for layer in run["layers"]}


MODELS = [
    {"block": "residual"},
    {"block": "residual", "norm": "layernorm"},
    {"block": "residual", "norm": "layernorm", "norm_position": "post"},
    {"block": "residual", "norm": "rmsnorm"},
    {"block": "residual", "norm": "batchnorm"},
    {"block": "residual", "multiplier": 0.5, "branch_depth": 1},
    {"norm": "layernorm"},
    {"norm": "layernorm", "norm_position": "post"},
    {"norm": "batchnorm"},
]


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: "-".join(map(str, m.values())))
def test_a_wide_model_measures_what_the_theory_expects(cli, tmp_path, model, act):
    """Width 1000, 500 Gaussian samples: each expected std (pre and post) and post mean is
    within 10 % of the measurement (the stream of a residual relu net grows 3× per block, and one
    draw of the weights moves it by a few per cent), and only the head goes without."""
    layers = _layers(cli, _config(tmp_path, act=act, **model))
    for name, layer in layers.items():
        post = layer["post"]
        if name == "head":
            assert post["expected_std"] is None
            continue
        assert post["expected_std"] == pytest.approx(post["std"], rel=0.1), name
        assert post["expected_mean"] == pytest.approx(post["mean"], rel=0.1,
                                                      abs=0.02 * post["std"]), name
        if layer["pre"] is not None and layer["pre"]["expected_std"] is not None:
            assert layer["pre"]["expected_std"] == pytest.approx(layer["pre"]["std"], rel=0.1)


def test_a_pre_layernorm_feeds_relu_a_unit_gaussian(cli, tmp_path):
    """fc{k}, norm{k}, relu: LayerNorm of N(0, q) has variance q / (q + ε) whatever q, and relu
    of N(0, s²) has mean s / √(2π) and std s · √(1/2 − 1/(2π)) (closed forms)."""
    layers = _layers(cli, _config(tmp_path, norm="layernorm", init="randn"))
    for k in (1, 2, 3):
        q = layers[f"fc{k}"]["post"]["expected_std"] ** 2
        assert q > 100  # randn: far from unit scale before the norm
        s = math.sqrt(q / (q + 1e-5))
        norm = layers[f"norm{k}"]
        assert norm["pre"]["expected_std"] == pytest.approx(s, rel=1e-12)
        assert norm["post"]["expected_mean"] == pytest.approx(s / math.sqrt(2 * math.pi),
                                                              rel=1e-9)
        assert norm["post"]["expected_std"] == pytest.approx(
            s * math.sqrt(0.5 - 1 / (2 * math.pi)), rel=1e-9)


def test_rezero_expects_the_stream_to_stay_the_input_layers(cli, tmp_path):
    layers = _layers(cli, _config(tmp_path, block="residual", init="rezero", act="tanh"))
    first = layers["inp"]["post"]
    for k in range(3):
        stream = layers[f"blocks.{k}"]["post"]
        assert (stream["expected_mean"], stream["expected_std"]) == pytest.approx(
            (first["expected_mean"], first["expected_std"]), rel=1e-12)
        assert stream["std"] == pytest.approx(first["std"], rel=1e-6)  # α = 0: measured too


def test_the_table_shows_measured_over_expected(cli, tmp_path):
    out = cli("run", _config(tmp_path, block="residual", norm="layernorm", width=64), "--wide",
              env={"COLUMNS": "200"}).stdout
    assert "exp std" in out and "meas/exp" in out
    row = next(line for line in out.splitlines() if line.startswith("blocks.0.norm"))
    assert " 1 " in row  # LayerNorm: std 1 measured, 1 expected, ratio 1


def test_no_theory_leaves_the_columns_out(cli, tmp_path):
    config = _config(tmp_path, block="residual", width=64)
    layers = _layers(cli, config, "--no-theory")
    assert all(layer["post"]["expected_std"] is None for layer in layers.values())
    assert "meas/exp" not in cli("run", config, "--no-theory", "--wide",
                                 env={"COLUMNS": "200"}).stdout
