"""Residual blocks and norm layers in the built-in model: structure, names, numbers against a
forward computed by hand in NumPy, and the config's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from actstat.activations import make_activation
from actstat.inits import make_bias_init, make_init
from actstat.model import ResidualBlock, build_residual, initialise

WIDTH, DEPTH, BRANCH, FEATURES, BATCH = 16, 3, 2, 12, 200
# the batch every run here reads (from a file, so that it is these numbers exactly)
X = np.random.default_rng(7).standard_normal((BATCH, FEATURES))


def _config(tmp_path, **model) -> str:
    """A config over a fixed file of N(0, 1) features, in float64, forward only."""
    np.save(tmp_path / "x.npy", X)
    keys = {"block": "residual", "depth": DEPTH, "width": WIDTH, "branch_depth": BRANCH, **model}
    lines = ["model:"] + [f"  {k}: {json.dumps(v)}" for k, v in keys.items()] + [
        f"data: {{source: x.npy, normalize: none, batch_size: {BATCH}}}",
        "dtype: float64", "device: cpu", "seed: 3", "grad: false",
        "init: kaiming", "activation: tanh"]
    path = tmp_path / "net.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _layers(cli, config: str) -> dict[str, dict]:
    report = json.loads(cli("run", config, "-q", "-f", "json").stdout)
    (run,) = report["runs"]
    return {layer["name"]: layer for layer in run["layers"]}


def _model(**options) -> nn.Module:
    """The model as the run builds it: the same seed, init and activation."""
    activation = make_activation("tanh")
    model = build_residual(in_features=FEATURES, width=WIDTH, depth=DEPTH, branch_depth=BRANCH,
                           num_classes=10, bias=True, activation=activation, **options)
    return initialise(model, make_init("kaiming"), make_bias_init("zeros"),
                      act_gain=activation.gain, seed=3, device=torch.device("cpu"),
                      dtype=torch.float64)


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy() for name, p in model.named_parameters()}


def _layer_norm(x: np.ndarray) -> np.ndarray:
    # weight 1 and bias 0 at init: only the normalisation (torch's eps)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def _by_hand(w: dict[str, np.ndarray], norm: str | None, position: str = "pre",
             alpha: float | None = None) -> dict[str, np.ndarray]:
    """Every row's output, computed from the weights alone: the stream x + α·branch(x)."""
    out = {}
    h = np.tanh(X @ w["inp.weight"].T + w["inp.bias"])
    out["inp"] = h
    for b in range(DEPTH):
        u = _layer_norm(h) if norm and position == "pre" else h
        for k in range(1, BRANCH + 1):
            u = np.tanh(u @ w[f"blocks.{b}.branch.fc{k}.weight"].T
                        + w[f"blocks.{b}.branch.fc{k}.bias"])
            out[f"blocks.{b}.branch.fc{k}"] = u
        h = h + (alpha if alpha is not None else 1.0) * u
        if norm and position == "post":
            h = _layer_norm(h)
        out[f"blocks.{b}"] = h
    return out


def test_the_residual_model_has_readable_names():
    model = build_residual(in_features=FEATURES, width=WIDTH, depth=DEPTH, branch_depth=BRANCH,
                           num_classes=10, bias=True, activation=make_activation("relu"),
                           norm="layernorm", multiplier=0.5)
    names = [name for name, _ in model.named_modules()]
    assert names[:3] == ["", "inp", "inp_act"]
    assert "blocks.2.branch.fc2" in names and "blocks.2.branch.act2" in names
    assert "blocks.0.norm" in names and names[-1] == "head"
    assert len(model.blocks) == DEPTH and all(isinstance(b, ResidualBlock) for b in model.blocks)
    assert "norm.weight" in dict(model.blocks[0].named_parameters())
    assert "multiplier" in dict(model.blocks[0].named_parameters())
    model = initialise(model, make_init("kaiming"), make_bias_init("zeros"), act_gain=2 ** 0.5,
                       seed=0, device=torch.device("cpu"), dtype=torch.float32)
    assert not model.training
    norm = model.blocks[1].norm
    assert torch.equal(norm.weight, torch.ones(WIDTH)) and torch.equal(norm.bias,
                                                                       torch.zeros(WIDTH))
    assert model.blocks[2].multiplier.item() == 0.5


@pytest.mark.parametrize("norm, position", [(None, "pre"), ("layernorm", "pre"),
                                            ("layernorm", "post")])
def test_rows_match_a_forward_by_hand(cli, tmp_path, norm, position):
    extra = {"norm": norm, "norm_position": position} if norm else {}
    rows = _layers(cli, _config(tmp_path, **extra))
    expected = _by_hand(_weights(_model(**{k: v for k, v in extra.items()})), norm, position)
    assert rows["blocks.1"]["kind"] == "block"
    assert rows["blocks.1.branch.fc2"]["module"] == "Linear → Tanh"
    for name in ("inp", "blocks.0.branch.fc1", "blocks.1.branch.fc2", "blocks.1", "blocks.2"):
        values = expected[name]
        assert rows[name]["post"]["std"] == pytest.approx(values.std(), rel=1e-9), name
        assert rows[name]["post"]["mean"] == pytest.approx(values.mean(), abs=1e-9), name
    if norm:
        names = [n for n in rows if n.endswith(".norm")]
        assert names == [f"blocks.{b}.norm" for b in range(DEPTH)]
        if position == "post":  # the stream itself is normalised: std 1 to within eps
            assert rows["blocks.2"]["post"]["std"] == pytest.approx(1.0, rel=1e-3)


def test_multiplier_zero_leaves_the_stream_as_its_input(cli, tmp_path):
    rows = _layers(cli, _config(tmp_path, multiplier=0.0))
    for b in range(DEPTH):
        assert rows[f"blocks.{b}"]["post"]["std"] == rows["inp"]["post"]["std"]
        assert rows[f"blocks.{b}"]["post"]["mean"] == rows["inp"]["post"]["mean"]
    # the branches still compute: ReZero zeroes their contribution, not their activations
    assert rows["blocks.1.branch.fc1"]["post"]["std"] > 0.1
    # a multiplier of 1 is the plain residual sum
    one = _layers(cli, _config(tmp_path, multiplier=1.0))
    plain = _layers(cli, _config(tmp_path))
    assert one["blocks.2"]["post"]["std"] == pytest.approx(plain["blocks.2"]["post"]["std"],
                                                           rel=1e-12)


def test_batchnorm_and_rmsnorm_run(cli, tmp_path):
    for norm in ("batchnorm", "rmsnorm"):
        rows = _layers(cli, _config(tmp_path, norm=norm))
        assert rows["blocks.0.norm"]["module"] in ("BatchNorm1d", "RMSNorm")


def test_plain_mlp_with_a_norm_layer(cli, tmp_path):
    # pre: fc1, norm1, act1, ...: the norm between the Linear and its activation
    rows = _layers(cli, _config(tmp_path, block="plain", norm="layernorm"))
    assert list(rows)[:2] == ["fc1", "norm1"] and rows["norm1"]["module"] == "LayerNorm → Tanh"
    assert rows["norm1"]["pre"]["std"] == pytest.approx(1.0, rel=1e-3)
    # post: fc1, act1, norm1, ...: the norm after the activation
    rows = _layers(cli, _config(tmp_path, block="plain", norm="layernorm", norm_position="post"))
    assert rows["fc1"]["module"] == "Linear → Tanh" and rows["norm1"]["module"] == "LayerNorm"
    assert rows["norm3"]["post"]["std"] == pytest.approx(1.0, rel=1e-3)
    assert list(rows)[-1] == "head"


def test_the_cli_options(cli):
    text = cli("run", "-q", "--block", "residual", "--norm", "layernorm", "--depth", "2",
               "--width", "8", "--branch-depth", "1", "--data", "gaussian", "--batch-size",
               "64").stdout
    assert "blocks.1.branch.fc1" in text and "blocks.1.norm" in text
    assert "blocks.1.branch.fc2" not in text


@pytest.mark.parametrize("args, message", [
    (["--block", "residual", "--branch-depth", "0"], "model.branch_depth: must be ≥ 1"),
    (["--norm", "groupnorm"], "model.norm: must be one of"),
    (["--block", "residual", "--depth", "2", "--width", "8,16"], "one width for every layer"),
    (["--model", "nets.py:make", "--norm", "layernorm"], "norm is for the built-in model"),
])
def test_config_errors_are_one_line(cli, args, message):
    result = cli("run", "-q", *args, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_multiplier_needs_residual_blocks(cli, tmp_path):
    config = _config(tmp_path, block="plain", multiplier=0.0)
    result = cli("run", config, "-q", code=2)
    assert "multiplier scales a residual branch" in result.stderr


def test_the_plain_mlps_baseline_still_checks(cli):
    cli("check", "tests/data/report_v1.json", "-q")


def test_a_residual_baseline_checks_against_a_new_run(cli, tmp_path):
    # its rows are modules by name, not `depth` numbered layers: check matches them by name
    config = _config(tmp_path, norm="rmsnorm", multiplier=0.5)
    baseline = str(tmp_path / "base.json")
    cli("baseline", config, "-o", baseline, "-q")
    cli("check", baseline, "-q")
    drifted = cli("check", baseline, "--stored-config", "--seed", "4", code=1)
    assert "blocks." in drifted.stdout


def test_rmsnorm_on_a_torch_without_it_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.delattr(nn, "RMSNorm")  # torch before 2.4
    result = cli("run", _config(tmp_path, norm="rmsnorm"), "-q", code=2)
    assert "rmsnorm needs torch 2.4 or later" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
