"""Training probe on residual and normalised models: the numbers of a hand-written SGD loop on
the same seeded model, determinism, the α of rezero, the JSON round trip and the 80-column
training section."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actstat.activations import make_activation
from actstat.build import build_blocks
from actstat.config import load_config
from actstat.data import load_batch
from actstat.inits import make_bias_init, make_init
from actstat.model import initialise
from actstat.pipeline import profile
from actstat.render import tables
from actstat.report import Report

STEPS, LR = 6, 0.1


def _config(init: str = "kaiming", **model):
    keys = {"model.block": "residual", "model.depth": 3, "model.width": 12,
            **{f"model.{k}": v for k, v in model.items()}}
    return load_config(None, {"init": [init], "activation": ["relu"], **keys,
                              "data.batch_size": 64, "train.steps": STEPS, "train.lr": LR,
                              "dtype": "float64", "device": "cpu", "seed": 5})


def _by_hand(config):
    """The scheme's model as the pipeline builds it, trained by a loop written here: `p -= lr *
    grad` in train mode; the losses, each Linear's ||W_end - W_start|| by name, and the α's."""
    init, act = config.init[0], config.activation[0]
    activation = make_activation(act.name, act.params)
    weight_init = make_init(init.name, init.params)
    batch = load_batch(config.data, seed=config.seed, device=torch.device("cpu"),
                       dtype=torch.float64, num_classes=10)
    model = initialise(build_blocks(config, activation, batch.inputs.shape[1], weight_init),
                       weight_init, make_bias_init(init.bias.name, init.bias.params),
                       act_gain=activation.gain, seed=config.seed, device=torch.device("cpu"),
                       dtype=torch.float64)
    start = {name: m.weight.detach().clone() for name, m in model.named_modules()
             if isinstance(m, nn.Linear)}
    model.train()
    losses = []
    for _ in range(STEPS):
        model.zero_grad()
        loss = F.cross_entropy(model(batch.inputs), batch.labels)
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= LR * p.grad
    with torch.no_grad():
        losses.append(F.cross_entropy(model(batch.inputs), batch.labels).item())
    moved = {name: (m.weight.detach() - start[name]).norm().item()
             for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    alphas = {f"{name}.multiplier": m.multiplier.item() for name, m in model.named_modules()
              if hasattr(m, "multiplier")}
    return losses, moved, alphas


CASES = {
    "fixup": ("fixup", {}),
    "rezero": ("rezero", {}),
    "batchnorm pre": ("kaiming", {"norm": "batchnorm"}),
    "layernorm post, α": ("default", {"norm": "layernorm", "norm_position": "post",
                                      "multiplier": 0.5}),
    "plain MLP with batchnorm": ("kaiming", {"block": "plain", "norm": "batchnorm"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("init, model", CASES.values(), ids=list(CASES))
def test_the_numbers_of_a_hand_written_sgd_loop(init, model):
    config = _config(init, **model)
    (run,) = profile(config).runs
    losses, moved, alphas = _by_hand(config)
    train = run.train
    assert train.steps == STEPS and train.loss == pytest.approx(losses, rel=1e-9)
    assert train.loss[-1] < train.loss[0]
    *hidden, head = moved
    assert [layer.name for layer in train.layers] == hidden  # every Linear before the head
    for layer in train.layers:
        assert layer.weight_delta == pytest.approx(moved[layer.name], rel=1e-9, abs=1e-12)
    assert train.head_weight_delta == pytest.approx(moved[head], rel=1e-9, abs=1e-12)
    assert {alpha.name: alpha.end for alpha in train.multipliers} == pytest.approx(alphas)


@pytest.mark.slow
def test_batchnorm_trains_on_each_steps_batch_statistics():
    # in eval mode a fresh BatchNorm1d divides by its running variance (1), not the batch's:
    # the first loss would be the eval-mode forward's, which differs
    config = _config("kaiming", norm="batchnorm")
    (run,) = profile(config).runs
    assert run.train.loss[0] != pytest.approx(run.loss, rel=1e-6)
    assert run.train.loss[0] == pytest.approx(_by_hand(config)[0][0], rel=1e-12)


@pytest.mark.slow
def test_rezero_alphas_start_at_zero_and_learn():
    (run,) = profile(_config("rezero")).runs
    alphas = run.train.multipliers
    assert [alpha.name for alpha in alphas] == [f"blocks.{k}.multiplier" for k in range(3)]
    assert all(alpha.start == 0.0 and alpha.end != 0.0 for alpha in alphas)


@pytest.mark.slow
def test_the_same_config_trains_to_the_same_numbers():
    first, second = profile(_config("fixup")), profile(_config("fixup"))
    assert first.runs[0].train == second.runs[0].train


@pytest.mark.slow
def test_a_trained_residual_report_round_trips_through_json():
    report = profile(_config("rezero", norm="layernorm"))
    text = report.to_json()
    raw = json.loads(text)
    assert raw["runs"][0]["train"]["layers"][0]["name"] == "inp"
    assert raw["runs"][0]["train"]["multipliers"][0] == {
        "name": "blocks.0.multiplier", "start": 0.0,
        "end": report.runs[0].train.multipliers[0].end}
    assert Report.from_dict(raw) == report and Report.from_dict(raw).to_json() == text


@pytest.mark.slow
def test_a_report_without_names_or_multipliers_still_loads():
    # written before the training record named its layers: the fields are additive
    report = profile(load_config(None, {"model.depth": 2, "model.width": 8, "train.steps": 1,
                                        "data.batch_size": 32, "device": "cpu"}))
    raw = json.loads(report.to_json())
    assert [layer["name"] for layer in raw["runs"][0]["train"]["layers"]] == ["0", "2"]
    for layer in raw["runs"][0]["train"]["layers"]:
        del layer["name"]
    del raw["runs"][0]["train"]["multipliers"]
    old = Report.from_dict(raw)
    assert [layer.name for layer in old.runs[0].train.layers] == ["", ""]
    assert old.runs[0].train.multipliers == ()


@pytest.mark.slow
def test_the_training_section_reads_at_80_columns():
    report = profile(load_config(None, {
        "model.block": "residual", "model.depth": 8, "init": ["fixup"], "activation": ["relu"],
        "train.steps": 5, "data.batch_size": 200, "device": "cpu"}))
    import io

    from rich.console import Console

    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    for renderable in tables(report, 80):
        console.print(renderable)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "training: 5 SGD steps at lr 0.1: loss " in text and "…" not in text
    # ΔW stays at 80 columns (still sym leaves first); the head's and blocks' rows have none
    header = next(line for line in text.splitlines() if line.startswith("layer "))
    assert "ΔW" in header and "still sym" not in header, text
    assert "still sym" in text.split("left out to fit 80 columns:")[1], text


@pytest.mark.slow
def test_the_cli_trains_a_residual_model(cli):
    result = cli("run", "-q", "--block", "residual", "--depth", "2", "--width", "8",
                 "--batch-size", "64", "--init", "rezero", "--steps", "3", "-f", "json")
    train = json.loads(result.stdout)["runs"][0]["train"]
    assert [layer["name"] for layer in train["layers"]] == [
        "inp", "blocks.0.branch.fc1", "blocks.0.branch.fc2", "blocks.1.branch.fc1",
        "blocks.1.branch.fc2"]
    assert len(train["loss"]) == 4 and len(train["multipliers"]) == 2
    text = cli("run", "--block", "residual", "--depth", "2", "--width", "8", "--batch-size",
               "64", "--init", "rezero", "--steps", "3").stdout
    assert "training: 3 SGD steps at lr 0.1" in text and "; α 0 → " in text
