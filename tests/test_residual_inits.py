"""Structural inits (fixup, rezero, gpt2, bert): each paper's formula against the built model's
weights, the L and m each one reads, and their config errors through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from actstat.activations import make_activation
from actstat.inits import RESIDUAL_INITS, make_bias_init, make_init
from actstat.model import build_mlp, build_residual, initialise

WIDTH, FEATURES = 512, 256


def _model(init: str, *, blocks: int = 4, branch: int = 3, multiplier: float | None = None,
           norm: str = "none", params: dict | None = None, act: str = "relu") -> nn.Module:
    activation = make_activation(act)
    model = build_residual(in_features=FEATURES, width=WIDTH, depth=blocks, branch_depth=branch,
                           num_classes=10, bias=True, activation=activation, norm=norm,
                           multiplier=multiplier)
    # the bias init given is the noisiest one: structural inits must zero every bias anyway
    return initialise(model, make_init(init, params), make_bias_init("normal", {"std": 1.0}),
                      act_gain=activation.gain, seed=1, device=torch.device("cpu"),
                      dtype=torch.float64)


def _std(w: torch.Tensor) -> float:
    return float(w.detach().std(correction=0))


def _biases_zero(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert not module.bias.any()


@pytest.mark.parametrize("blocks, branch", [(4, 3), (16, 2), (9, 4)])
def test_fixup_scales_branch_layers_by_l_to_the_minus_one_over_2m_minus_2(blocks, branch):
    model = _model("fixup", blocks=blocks, branch=branch, multiplier=0.3)
    he = math.sqrt(2.0 / WIDTH)  # relu's gain √2 over fan_in = WIDTH
    scale = blocks ** (-1.0 / (2 * branch - 2))
    for block in model.blocks:
        fcs = [m for m in block.branch if isinstance(m, nn.Linear)]
        assert len(fcs) == branch
        for fc in fcs[:-1]:
            assert _std(fc.weight) == pytest.approx(he * scale, rel=0.03)
        assert not fcs[-1].weight.any()  # each branch's last layer: exactly zero
        assert block.multiplier.item() == 1.0  # Fixup's scalar multiplier starts at 1
    assert not model.head.weight.any()
    assert _std(model.inp.weight) == pytest.approx(math.sqrt(2.0 / FEATURES), rel=0.03)
    _biases_zero(model)


def test_fixup_with_one_layer_per_branch_zeroes_the_branch():
    model = _model("fixup", blocks=5, branch=1)
    for block in model.blocks:
        assert not block.branch.fc1.weight.any()
    x = torch.randn(8, FEATURES, dtype=torch.float64)
    # every block is the identity: the stream reaching the head is the input layer's output
    stream = model.blocks(model.inp_act(model.inp(x)))
    assert torch.equal(stream, model.inp_act(model.inp(x)))


def test_rezero_starts_every_multiplier_at_zero_and_he_initialises():
    model = _model("rezero", multiplier=0.7)
    for block in model.blocks:
        assert block.multiplier.item() == 0.0
        for fc in (m for m in block.branch if isinstance(m, nn.Linear)):
            assert _std(fc.weight) == pytest.approx(math.sqrt(2.0 / WIDTH), rel=0.03)
    _biases_zero(model)


@pytest.mark.parametrize("blocks", [4, 25])
def test_gpt2_scales_each_branch_output_by_one_over_root_2l(blocks):
    model = _model("gpt2", blocks=blocks, branch=2, params={"std": 0.02})
    for block in model.blocks:
        assert _std(block.branch.fc1.weight) == pytest.approx(0.02, rel=0.03)
        assert _std(block.branch.fc2.weight) == pytest.approx(0.02 / math.sqrt(2 * blocks),
                                                              rel=0.03)
    assert _std(model.inp.weight) == pytest.approx(0.02, rel=0.03)
    assert _std(model.head.weight) == pytest.approx(0.02, rel=0.06)  # 10 x 512 draws
    _biases_zero(model)


def test_bert_draws_std_0_02_with_zero_biases_and_unit_norms():
    model = _model("bert", norm="layernorm")
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == WIDTH:
            assert _std(module.weight) == pytest.approx(0.02, rel=0.03)
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones(WIDTH, dtype=torch.float64))
            assert not module.bias.any()
    _biases_zero(model)
    # initializer_range is its parameter
    wide = _model("bert", params={"std": 0.1})
    assert _std(wide.blocks[0].branch.fc1.weight) == pytest.approx(0.1, rel=0.03)


def test_bert_on_the_plain_mlp():
    activation = make_activation("relu")
    model = initialise(build_mlp(in_features=FEATURES, widths=[WIDTH, WIDTH], num_classes=10,
                                 bias=True, activation=activation), make_init("bert"),
                       make_bias_init("normal"), act_gain=activation.gain, seed=0,
                       device=torch.device("cpu"), dtype=torch.float64)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert not module.bias.any()
            if module.out_features == WIDTH:
                assert _std(module.weight) == pytest.approx(0.02, rel=0.03)


@pytest.mark.parametrize("name", RESIDUAL_INITS)
def test_every_structural_init_is_seeded(name):
    a, b = (_model(name, blocks=2, branch=2, multiplier=0.5) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_rezero_runs_without_a_configured_multiplier_and_every_block_is_the_identity(cli):
    report = json.loads(cli("run", "-q", "-f", "json", "--block", "residual", "--depth", "3",
                            "--width", "16", "--data", "gaussian", "--batch-size", "64",
                            "--no-grad", "-i", "rezero").stdout)
    (run,) = report["runs"]
    rows = {layer["name"]: layer for layer in run["layers"]}
    assert run["init"] == "rezero"
    for k in range(3):  # α = 0: each block's output is the input layer's output
        assert rows[f"blocks.{k}"]["post"]["std"] == pytest.approx(rows["inp"]["post"]["std"])
    # the branches are drawn (He), only their contribution is switched off
    assert rows["blocks.1.branch.fc2"]["pre"]["std"] > 0.5


@pytest.mark.parametrize("args, message", [
    (["-i", "fixup"], "fixup needs residual blocks: set model.block residual"),
    (["-i", "gpt2", "--depth", "2"], "gpt2 needs residual blocks"),
    (["-i", "rezero"], "rezero needs residual blocks"),
    (["-i", "fixupp", "--block", "residual"], "did you mean 'fixup'"),
    (["-i", "bert", "--model", "nets.py:make"], "bert draws by the built-in model"),
])
def test_errors_are_one_line(cli, args, message):
    result = cli("run", "-q", *args, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_bias_init_with_a_structural_init_is_one_line(cli, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {block: residual, depth: 2, width: 8}\n"
                    "init: {name: fixup, bias: {name: normal}}\n", encoding="utf-8")
    result = cli("run", str(path), "-q", code=2)
    assert "fixup sets every bias to 0: drop init.bias" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_compare_residual_inits(cli):
    report = json.loads(cli("compare", "-q", "-f", "json", "--block", "residual", "--depth", "20",
                            "--width", "32", "--data", "gaussian", "--batch-size", "64",
                            "-i", "kaiming,fixup,rezero,skipinit,gpt2").stdout)
    runs = {run["init"]: {layer["name"]: layer for layer in run["layers"]}
            for run in report["runs"]}
    assert set(runs) == {"kaiming", "fixup", "rezero", "gpt2"}  # skipinit is rezero's alias
    # fixup's zero branch ends and head: every block is the identity, the logits are 0
    assert runs["fixup"]["blocks.19"]["post"]["std"] == pytest.approx(
        runs["fixup"]["inp"]["post"]["std"])
    assert runs["fixup"]["head"]["post"]["std"] == 0.0
    assert runs["rezero"]["blocks.19"]["post"]["std"] == pytest.approx(
        runs["rezero"]["inp"]["post"]["std"])
    # kaiming's 20 unscaled branches grow the stream; gpt2's are small against it
    assert runs["kaiming"]["blocks.19"]["post"]["std"] > 2 * runs["kaiming"]["inp"]["post"]["std"]
