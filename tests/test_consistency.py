"""Options behave one way across commands: every output's directory must exist (the output
itself is made), and an option that does not apply is refused with the reason."""

from __future__ import annotations

import pytest

SMALL = ["--depth", "2", "--width", "8", "--batch-size", "16", "--data", "gaussian",
         "--device", "cpu"]


@pytest.mark.parametrize("args", [
    ["run", "-o", "{missing}/r.json"],
    ["run", "--plot", "{missing}/r.png"],
    ["baseline", "-o", "{missing}/b.json"],
    ["check", "{config}", "--fail-on", "any", "--junit-xml", "{missing}/j.xml"],
    ["train", "--tensorboard", "{missing}/runs"],
])
def test_every_output_refuses_a_missing_directory_the_same_way(cli, tmp_path, args):
    config = tmp_path / "c.yaml"
    config.write_text("model: {depth: 2, width: 8}\ndata: {batch_size: 16, source: gaussian}\n")
    missing = tmp_path / "nowhere" / "deeper"
    given = [arg.format(missing=missing, config=config) for arg in args]
    small = [] if args[0] == "check" else SMALL[:4] + SMALL[6:] if args[0] == "train" else SMALL
    result = cli(*given, *small, code=2)
    assert f"directory '{missing}' does not exist" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()  # nothing made on the way


def test_a_tensorboard_directory_in_an_existing_one_is_made(tmp_path):
    from actstat.tensorboard_log import check_tensorboard

    check_tensorboard(tmp_path / "runs")
    assert (tmp_path / "runs").is_dir()


@pytest.mark.parametrize("command", ["run", "compare", "baseline"])
def test_layers_without_a_model_is_refused_with_the_reason(cli, command):
    result = cli(command, "--layers", "fc1", *SMALL, code=2)
    assert result.stderr.startswith("actstat: error: --layers: model.layers: selects modules of "
                                    "your own model (--model, model.factory)")


def test_a_model_in_training_mode_is_measured_with_dropout_off_and_batchnorm_as_it_is():
    import torch
    from torch import nn

    import actstat

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 4))
    inputs = torch.randn(32, 8)
    model.train()
    stds = [[layer.post.std for layer in actstat.profile(model, inputs).runs[0].layers]
            for _ in range(2)]
    assert stds[0] == stds[1]  # dropout drew nothing: one set of numbers
    assert model.training and all(m.training for m in model.modules())  # left as it was
    # BatchNorm kept its training behaviour (the batch's statistics), dropout alone went off
    model[3].eval()
    with torch.no_grad():
        expected = model(inputs).std(unbiased=False).item()
    model[3].train()
    head = actstat.profile(model, inputs).runs[0].layers[-1]
    assert abs(head.post.std - expected) <= 1e-5 * expected


@pytest.mark.parametrize("args, message", [
    (["run", "--branch-depth", "3"], "actstat: error: --branch-depth: model.branch_depth: counts "
     "the layers of a residual branch: set model.block residual (--block residual), or leave "
     "branch_depth out"),
    (["run", "--norm-position", "post"], "actstat: error: --norm-position: model.norm_position: "
     "places a norm layer: set model.norm (--norm layernorm, ...), or leave norm_position out"),
    (["train", "--heatmap", "1", "--steps", "2"], "actstat: error: --heatmap draws histograms: "
     "add --hist (or --plot), or leave --heatmap out"),
])
def test_an_option_that_does_not_apply_is_refused_with_the_reason(cli, args, message):
    result = cli(*args, "--depth", "2", code=2)
    assert result.stderr.strip() == message


def test_a_key_that_applies_to_some_compare_scheme_is_accepted(tmp_path):
    from actstat.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("model: {branch_depth: 3, depth: 2}\ncompare:\n"
                    "  - {init: kaiming, activation: relu}\n"
                    "  - {init: kaiming, activation: relu, model: {block: residual}}\n")
    assert load_config(path).model.branch_depth == 3
