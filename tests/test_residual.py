"""Residual blocks and norm layers in the built-in model: structure, names, numbers against a
forward computed by hand in NumPy, and the config's errors."""

from __future__ import annotations

import csv
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
        # post: the norm's output is the block's, one row (the block's)
        assert names == ([f"blocks.{b}.norm" for b in range(DEPTH)] if position == "pre"
                         else [])
        if position == "post":  # the stream itself is normalised: std 1 to within eps
            assert rows["blocks.2"]["post"]["std"] == pytest.approx(1.0, rel=1e-3)
            assert rows["blocks.2"]["module"] == "ResidualBlock"


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


def test_norm_position_and_multiplier_on_the_command_line(cli):
    """--norm-position post puts the norm after the add (its row after the branch's), and
    --multiplier 0 starts every α at 0: each block hands its input on unchanged."""
    report = json.loads(cli("run", "-q", "-f", "json", "--block", "residual", "--norm",
                            "layernorm", "--norm-position", "post", "--multiplier", "0",
                            "--depth", "2", "--width", "8", "--data", "gaussian",
                            "--batch-size", "64").stdout)
    model = report["config"]["model"]
    assert (model["norm_position"], model["multiplier"]) == ("post", 0.0)
    rows = {layer["name"]: layer for layer in report["runs"][0]["layers"]}
    names = list(rows)
    # the norm's output is the block's: one row, after the branch's
    assert "blocks.0.norm" not in names
    assert names.index("blocks.0") > names.index("blocks.0.branch.fc1")
    # α = 0: the block's output is the norm of its input alone: LayerNorm twice is LayerNorm
    # once, up to its ε
    assert rows["blocks.1"]["post"]["std"] == pytest.approx(rows["blocks.0"]["post"]["std"],
                                                            rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--block", "residual", "--branch-depth", "0"], "model.branch_depth: must be ≥ 1"),
    (["--norm", "groupnorm"], "model.norm: must be one of"),
    (["--norm", "layernorm", "--norm-position", "middle"], "model.norm_position: must be one of"),
    (["--block", "residual", "--multiplier", "big"], "model.multiplier: must be a number"),
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


# -- verdicts: the stream is the signal; a structural init's zeros are by design --------------

def _verdict_config(tmp_path, init: str, act: str, *, scale: float | None = None,
                    grad: bool = True, **model) -> str:
    """A residual model of width 32 in float64, with gradients, on 200 MNIST digits; with
    `scale`, on `_config`'s N(0, 1) batch times `scale` instead (targets drawn with the seed)."""
    data = "{source: mnist, batch_size: 200}"
    if scale is not None:
        np.save(tmp_path / "x.npy", scale * X)
        data = f"{{source: x.npy, normalize: none, batch_size: {BATCH}}}"
    keys = {"block": "residual", "depth": DEPTH, "width": 32, "branch_depth": BRANCH, **model}
    lines = ["model:"] + [f"  {k}: {json.dumps(v)}" for k, v in keys.items()] + [
        f"data: {data}", "dtype: float64", "device: cpu", "seed: 3",
        f"grad: {json.dumps(grad)}",
        f"init: {init}", f"activation: {act}"]  # init: a name, or {name: ..., param: ...}
    path = tmp_path / "scheme.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _run(cli, config: str, *args: str, code: int = 0) -> dict:
    (run,) = json.loads(cli("run", config, "-q", "-f", "json", *args, code=code).stdout)["runs"]
    run["rows"] = {layer["name"]: layer for layer in run["layers"]}
    return run


def _trained(config: str, steps: int = 3) -> nn.Module:
    """The run's model on the run's batch and drawn targets, after `steps` steps of plain SGD:
    what training does to the zeros that the analysis calls by design."""
    from actstat.build import build_blocks
    from actstat.config import load_config
    from actstat.data import load_batch

    resolved = load_config(config)
    (init,), (act,) = resolved.init, resolved.activation
    activation, weights = make_activation(act.name), make_init(init.name, init.params)
    cpu = torch.device("cpu")
    batch = load_batch(resolved.data, seed=resolved.seed, device=cpu, dtype=torch.float64,
                       num_classes=10)
    model = build_blocks(resolved, activation, batch.inputs.shape[1], weights)
    model = initialise(model, weights, make_bias_init("zeros"), act_gain=activation.gain, seed=resolved.seed,
                       device=cpu, dtype=torch.float64).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(batch.inputs), batch.labels).backward()
        optimiser.step()
    return model


def test_fixup_with_tanh_is_healthy_and_says_its_zeros_are_by_design(cli, tmp_path):
    config = _verdict_config(tmp_path, "fixup", "tanh")
    run = _run(cli, config, "--fail-on", "any")  # nothing flagged: exit 0
    rows = run["rows"]
    assert run["verdict"] == "healthy"
    assert all(not layer["flags"] for layer in run["layers"])
    # what would have been flagged is recorded as by design, and only where the zeros are
    for b in range(DEPTH):
        last = rows[f"blocks.{b}.branch.fc2"]
        assert last["post"]["std"] == 0 and last["grad"]["weight_std"] == 0
        # tanh has no flat region: a unit at tanh(0) = 0 passes its gradient, it is not dead
        assert last["by_design"] == ["symmetric", "grad_zero"] and last["post"]["dead"] is None
        assert rows[f"blocks.{b}.branch.fc1"]["by_design"] == ["grad_zero"]
    assert rows["head"]["by_design"] == ["symmetric", "dead"]
    assert rows["head"]["grad"]["weight_std"] > 0  # the head learns at once
    assert rows["inp"]["by_design"] == ["grad_zero"] and rows["inp"]["grad"]["std"] == 0
    (note,) = run["notes"]
    assert note.startswith("zero by design (fixup): blocks.*.branch.fc2 and head start at 0")
    assert "7 layers' gradients are exactly 0 at step 0" in note
    # and it is true: training moves the zeros, after which every layer's weights move
    trained = _trained(config)
    assert all(block.branch.fc2.weight.abs().max() > 0 for block in trained.blocks)
    # the table says it once, under the table, not as a flag on ten rows
    text = cli("run", config, "-q").stdout
    assert "fixup + tanh: healthy" in text and "zero by design (fixup)" in text
    assert text.count("zero by design") == 1
    table = {row["name"]: row for row in csv.DictReader(
        cli("run", config, "-q", "-f", "csv").stdout.splitlines())}
    assert table["head"]["flags"] == "" and table["head"]["by_design"] == "symmetric;dead"


def test_fixup_with_relu_keeps_the_branches_that_can_never_leave_zero_flagged(cli, tmp_path):
    # each branch ends in relu: its zero last layer's pre-activation is 0 for every sample,
    # where relu's gradient is 0, so nothing ever moves it: dead for good, not by design
    config = _verdict_config(tmp_path, "fixup", "relu")
    run = _run(cli, config)
    rows = run["rows"]
    assert run["verdict"] == "grad_zero"
    for b in range(DEPTH):
        assert rows[f"blocks.{b}.branch.fc2"]["flags"] == ["grad_zero", "dead"]
        assert rows[f"blocks.{b}.branch.fc2"]["by_design"] == ["symmetric"]
        assert rows[f"blocks.{b}.branch.fc1"]["flags"] == ["grad_zero"]
    # the head and the layers before it are zero by design as with tanh
    assert not rows["head"]["flags"] and not rows["inp"]["flags"]
    assert rows["inp"]["by_design"] == ["grad_zero"]
    assert run["notes"][1].startswith("but relu is flat at 0: blocks.*.branch.fc2 get no "
                                      "gradient, never leave 0 and stay dead")
    trained = _trained(config)
    assert all(torch.equal(block.branch.fc2.weight, torch.zeros_like(block.branch.fc2.weight))
               for block in trained.blocks)
    assert trained.head.weight.abs().max() > 0
    cli("run", config, "-q", "--fail-on", "dead", code=1)


def test_rezero_is_healthy_its_branch_gradients_zero_by_design(cli, tmp_path):
    config = _verdict_config(tmp_path, "rezero", "relu")
    run = _run(cli, config, "--fail-on", "any")
    rows = run["rows"]
    assert run["verdict"] == "healthy"
    for b in range(DEPTH):
        for k in range(1, BRANCH + 1):
            row = rows[f"blocks.{b}.branch.fc{k}"]
            assert row["grad"]["weight_std"] == 0 and row["by_design"] == ["grad_zero"]
        assert rows[f"blocks.{b}"]["grad"]["std"] > 0  # the stream's gradient is not silenced
    assert run["notes"] == ["zero by design (rezero): α starts at 0 in blocks.* (each block "
                            "starts as the identity), so 6 layers' gradients are exactly 0 at "
                            "step 0 (they flow once training moves those zeros)"]
    trained = _trained(config, steps=1)
    assert all(block.multiplier.detach() != 0 for block in trained.blocks)
    # model.multiplier 0 with a per-weight init is the same design, said to be the config's
    run = _run(cli, _verdict_config(tmp_path, "kaiming", "relu", multiplier=0.0))
    assert run["verdict"] == "healthy"
    assert run["notes"][0].startswith("zero by design (model.multiplier 0): α starts at 0")


def test_without_gradients_the_note_says_what_starts_at_zero(cli, tmp_path):
    run = _run(cli, _verdict_config(tmp_path, "fixup", "tanh", grad=False))
    assert run["verdict"] == "healthy"
    assert run["rows"]["blocks.0.branch.fc2"]["by_design"] == ["symmetric"]  # tanh: not dead
    assert run["notes"] == ["zero by design (fixup): blocks.*.branch.fc2 and head start at 0"]


def test_zeros_is_still_symmetric_on_a_residual_model(cli, tmp_path):
    run = _run(cli, _verdict_config(tmp_path, "zeros", "relu"), "--fail-on", "symmetric",
               code=1)
    assert run["verdict"] == "symmetric" and not run["notes"]
    assert "symmetric" in run["rows"]["inp"]["flags"]
    assert all(not layer["by_design"] for layer in run["layers"])


def test_small_branch_outputs_are_not_vanishing_a_vanishing_stream_is(cli, tmp_path):
    report = json.loads(cli("run", _verdict_config(tmp_path, "gpt2", "relu"), "-q", "-f",
                            "json").stdout)
    (run,) = report["runs"]
    rows = {layer["name"]: layer for layer in run["layers"]}
    for b in range(DEPTH):  # what used to read vanishing: a small term added to the stream
        assert rows[f"blocks.{b}.branch.fc2"]["post"]["std"] < 0.1 * report["input"]["std"]
        assert not rows[f"blocks.{b}.branch.fc2"]["flags"]
    assert run["verdict"] == "healthy"
    # gpt2 with a 100× smaller std: the stream is lost from its start (the input layer), and
    # that is flagged there; the blocks keep the start's scale (judged against it)
    tiny = _run(cli, _verdict_config(tmp_path, "{name: gpt2, std: 0.0002}", "relu"))
    assert tiny["verdict"] == "vanishing"
    flagged = [layer["name"] for layer in tiny["layers"] if "vanishing" in layer["flags"]]
    assert flagged == ["inp"]
    assert tiny["rows"]["inp"]["stream"] == "start"
    assert tiny["rows"]["blocks.2"]["scale_of"] == "inp"


def test_a_genuine_problem_is_still_flagged_under_fixup(cli, tmp_path):
    # inputs 3× larger saturate the input layer's tanh: fixup's zeros do not excuse that
    run = _run(cli, _verdict_config(tmp_path, "fixup", "tanh", scale=3.0))
    assert run["verdict"] == "saturated" and "saturated" in run["rows"]["inp"]["flags"]
    assert run["notes"]  # and the zeros are still by design
    # a stream that explodes is flagged on the stream, whatever the branches read, and the
    # branches that blow it up before it, as its cause (the verdict)
    run = _run(cli, _verdict_config(tmp_path, "randn", "relu"))
    assert run["verdict"] == "large_branch"
    assert "large_branch" in run["rows"]["blocks.0.branch.fc2"]["flags"]
    assert "exploding" in run["rows"]["blocks.2"]["flags"]
    assert all("exploding" not in layer["flags"] for name, layer in run["rows"].items()
               if ".branch." in name)


def test_one_block_is_named_like_the_others(cli, tmp_path):
    run = _run(cli, _verdict_config(tmp_path, "kaiming", "relu", depth=1))
    assert list(run["rows"]) == ["inp", "blocks.0.branch.fc1", "blocks.0.branch.fc2",
                                 "blocks.0", "head"]
    assert run["rows"]["blocks.0"]["kind"] == "block"


def test_compare_gives_each_scheme_its_verdict_and_notes(cli, tmp_path):
    config = _verdict_config(tmp_path, "kaiming", "tanh")
    text = cli("compare", config, "-q", "--init", "fixup,rezero,gpt2,zeros").stdout
    verdicts = {line.split("  ")[0]: line.split()[3] for line in text.splitlines()
                if " + tanh " in line and "zero by design" not in line}
    assert verdicts == {"fixup + tanh": "healthy", "rezero + tanh": "healthy",
                        "gpt2 + tanh": "healthy", "zeros + tanh": "symmetric"}
    notes = [line for line in text.splitlines() if "zero by design" in line]
    assert [line.split(":")[0] for line in notes] == ["fixup + tanh", "rezero + tanh"]


def test_a_fixup_baseline_checks_and_its_notes_round_trip(cli, tmp_path):
    config = _verdict_config(tmp_path, "fixup", "tanh")
    baseline = tmp_path / "base.json"
    cli("baseline", config, "-o", str(baseline), "-q")
    raw = json.loads(baseline.read_text(encoding="utf-8"))
    assert raw["runs"][0]["notes"] and raw["runs"][0]["layers"][-1]["by_design"]
    from actstat.report import read_report

    report = read_report(baseline)
    assert report.runs[0].notes == tuple(raw["runs"][0]["notes"])
    assert report.to_dict()["runs"][0] == raw["runs"][0]
    cli("check", str(baseline), "-q", "--fail-on", "any")
