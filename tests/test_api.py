"""actstat.profile, the Report of any model, and actstat.testing.assert_healthy.

The capture's numbers are checked tensor by tensor against hand-written traces in
tests/test_capture.py; here each row of the Report is checked against the same traces
(tests/models.py): which tensors a row pairs, its numbers (NumPy, float64), its flags."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import actstat
from actstat.errors import ConfigError, ModelError
from actstat.report import Report, read_report
from actstat.testing import assert_healthy
from models import (
    InplaceResNet,
    ResidualMLP,
    SharedTanh,
    SmallCNN,
    TinyTransformer,
    TransposedLinearNet,
    gaussian,
    labels,
    mnist_images,
)


def traced(model: nn.Module, inputs) -> dict[str, np.ndarray]:
    refs, _ = copy.deepcopy(model).trace(inputs)
    return {ref.name: ref.tensor.detach().double().numpy() for ref in refs}


def same(got: float | None, want: float, scale: float = 0.0, rtol: float = 1e-5) -> bool:
    return got is not None and abs(got - want) <= rtol * (abs(want) + abs(scale)) + 1e-12


def test_cnn_rows_pair_each_norm_with_the_activation_that_consumes_it():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    images = mnist_images(64)
    report = actstat.profile(model, images, labels(64, 10))
    run = report.runs[0]
    rows = {layer.name: layer for layer in run.layers}
    assert [(layer.name, layer.kind, layer.module) for layer in run.layers] == [
        ("conv1", "weight", "Conv2d"), ("bn1", "norm", "BatchNorm2d → ReLU"),
        ("conv2:input", "input", "Conv2d"), ("conv2", "weight", "Conv2d"),
        ("bn2", "norm", "BatchNorm2d → ReLU"), ("fc:input", "input", "Linear"),
        ("fc", "weight", "Linear")]
    ref = traced(model, images)
    for name, pre, post in (("bn1", "bn1", "relu1"), ("bn2", "bn2", "relu2"),
                            ("conv1", None, "conv1"), ("fc", None, "fc")):
        row = rows[name]
        if pre is None:
            assert row.pre is None
        else:
            assert same(row.pre.std, ref[pre].std()) and same(row.pre.mean, ref[pre].mean(), 1.0)
        assert same(row.post.std, ref[post].std())
        assert same(row.post.mean, ref[post].mean(), ref[post].std())
        channels = np.moveaxis(ref[post], 1, 0).reshape(ref[post].shape[1], -1) \
            if ref[post].ndim == 4 else ref[post].T
        assert row.post.dead == pytest.approx(np.mean(np.all(channels == 0, axis=1)))
        assert row.fan_out == ref[post].shape[1]
    # fans as torch.nn.init computes them: in_channels × kernel; Linear: in_features
    assert rows["conv1"].fan_in == 1 * 3 * 3 and rows["conv2"].fan_in == 8 * 3 * 3
    assert rows["fc"].fan_in == 16 * 7 * 7 and rows["bn1"].fan_in is None
    assert report.input.shape == (1, 28, 28) and report.input.features == 784
    assert same(report.input.std, images.double().std(unbiased=False).item())


def test_residual_stream_rows_and_a_dead_unit_flag():
    torch.manual_seed(0)
    model = ResidualMLP()
    with torch.no_grad():
        model.blocks[1].fc1.bias[:] = -100.0  # every unit of this block's fc1 never fires
    x = gaussian(64, 20)
    run = actstat.profile(model, x, labels(64, 10)).runs[0]
    rows = {layer.name: layer for layer in run.layers}
    assert rows["blocks.1.fc1"].module == "Linear → ReLU"
    assert rows["blocks.1.fc1"].post.dead == 1.0 and "dead" in rows["blocks.1.fc1"].flags
    assert rows["blocks.0.fc1"].post.dead < 0.5 and "dead" not in rows["blocks.0.fc1"].flags
    ref = traced(model, x)
    for i in range(3):
        stream = rows[f"blocks.{i}"]
        assert stream.kind == "block" and stream.pre is None
        assert same(stream.post.std, ref[f"blocks.{i}"].std())
    # its units are 0 for every sample, so its post std is 0 too; but a branch row is not held
    # to vanishing (the stream it adds to is, and keeps its scale): the branch is dead, and
    # its dead units pass no gradient to its weights
    assert run.verdict == "grad_zero" and rows["blocks.1.fc1"].flags == ("grad_zero", "dead")
    assert not rows["blocks.1"].flags


def test_transformer_on_tokens_has_no_input_std_and_flags_against_the_embedding():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    tokens = torch.randint(50, (8, 12), generator=torch.Generator().manual_seed(2))
    report = actstat.profile(model, tokens, tokens)
    assert report.input.std is None and report.input.mean is None
    assert report.input.shape == (12,)
    names = [layer.name for layer in report.runs[0].layers]
    assert names[0] == "embed" and "blocks.1" in names and names[-1] == "head"
    rows = {layer.name: layer for layer in report.runs[0].layers}
    # the attention module is a row of its own (its output, its heads' entropy), not the
    # LayerNorm's activation
    assert rows["blocks.0.ln1"].module == "LayerNorm"
    assert rows["blocks.0.attn"].kind == "attention" and len(rows["blocks.0.attn"].attention_entropy) == 4
    assert rows["blocks.0.fc1"].module == "Linear → GELU"
    assert rows["embed"].stream == "start" and rows["blocks.1"].stream == "block"
    assert report.runs[0].verdict == "healthy"


def test_conv1d_rows_take_fan_in_from_the_weights_first_dimension():
    """Hugging Face's Conv1D stores its weight (in, out): its fan-in is size(0), not size(1)."""
    torch.manual_seed(0)
    model = TransposedLinearNet(inputs=20, dim=16, classes=10)
    x = gaussian(32, 20)
    report = actstat.profile(model, x, labels(32, 10))
    fans = {layer.name: (layer.fan_in, layer.fan_out) for layer in report.runs[0].layers
            if layer.kind == "weight"}
    assert fans == {"c_in": (20, 16), "blocks.0.c_fc": (16, 64), "blocks.0.c_proj": (64, 16),
                    "blocks.1.c_fc": (16, 64), "blocks.1.c_proj": (64, 16), "head": (16, 10)}
    fc = next(layer for layer in report.runs[0].layers if layer.name == "blocks.0.c_fc")
    want = traced(model, x)
    assert fc.module == "Conv1D → GELU"
    assert same(fc.pre.std, want["blocks.0.c_fc"].std()) and same(fc.post.std,
                                                                     want["blocks.0.act"].std())


def test_exploding_vanishing_and_gradient_flags_on_a_deep_plain_network():
    def deep(init) -> nn.Sequential:
        torch.manual_seed(0)
        layers = []
        for _ in range(12):
            linear = nn.Linear(64, 64)
            init(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(64, 10))

    x, y = gaussian(256, 64), labels(256, 10)
    big = actstat.profile(deep(lambda w: nn.init.normal_(w, 0, 1)), x, y).runs[0]
    assert big.verdict == "exploding"
    assert "exploding" in big.layers[-2].flags and "exploding" not in big.layers[0].flags
    small = actstat.profile(deep(lambda w: nn.init.normal_(w, 0, 0.05)), x, y).runs[0]
    assert "vanishing" in small.layers[-2].flags
    # the head is the gradient reference's successor, never held to it
    assert not {"grad_vanishing", "grad_exploding"} & set(small.layers[-1].flags)
    assert "grad_vanishing" in small.layers[0].flags  # dL/dh shrinks on its way back too
    good = actstat.profile(deep(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
                           x, y).runs[0]
    assert good.verdict == "healthy"


def test_zero_init_is_symmetric_and_its_weights_cannot_learn():
    model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 20), nn.ReLU(),
                          nn.Linear(20, 3))
    for p in model.parameters():
        nn.init.zeros_(p)
    run = actstat.profile(model, gaussian(32, 10), labels(32, 3)).runs[0]
    assert run.verdict == "symmetric"
    assert all("symmetric" in layer.flags for layer in run.layers if layer.kind == "weight")
    assert "grad_zero" in run.layers[0].flags


def test_saturation_only_where_a_bounded_activation_runs():
    torch.manual_seed(0)
    model = SharedTanh()
    with torch.no_grad():
        model.fc1.weight.mul_(40.0)
    run = actstat.profile(model, gaussian(64, 12), labels(64, 5)).runs[0]
    rows = {layer.name: layer for layer in run.layers}
    assert rows["fc1"].module == "Linear → Tanh" and rows["fc1"].post.saturated > 0.5
    assert "saturated" in rows["fc1"].flags
    assert rows["fc3"].post.saturated is None


def test_inplace_relu_after_convolutions():
    torch.manual_seed(0)
    model = InplaceResNet().eval()
    images = mnist_images(16)
    run = actstat.profile(model, images, labels(16, 10)).runs[0]
    rows = {layer.name: layer for layer in run.layers}
    ref = traced(model, images)
    # the conv output as it was before nn.ReLU(inplace=True) overwrote it
    assert same(rows["stem"].pre.std, ref["stem"].std())
    assert same(rows["stem"].post.std, ref["relu"].std())
    # the block adds its shortcut onto bn2's output in place before its ReLU: that ReLU is
    # not bn2's activation (its output is the block's row); bn2's output is the branch
    assert rows["layer.0.bn2"].module == "BatchNorm2d" and rows["layer.0.bn2"].branch_ratio > 0
    assert same(rows["layer.0"].post.std, ref["layer.0"].std())
    assert all(layer.grad is not None and layer.grad.std > 0 for layer in run.layers)


def test_half_precision_models_report_finite_numbers():
    torch.manual_seed(0)
    model = ResidualMLP().to(torch.bfloat16)
    report = actstat.profile(model, gaussian(32, 20).to(torch.bfloat16), labels(32, 10))
    assert report.config["dtype"] == "bfloat16"
    assert all(layer.post.std is not None for layer in report.runs[0].layers)


def test_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = SmallCNN().train()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    state = copy.deepcopy(model.state_dict())
    handle = model.register_forward_hook(lambda *args: None)
    actstat.profile(model, mnist_images(16), labels(16, 10))
    assert model.training and all(m.training for m in model.modules())
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 7.0))
    assert model.conv2.weight.grad is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert list(model._forward_hooks) == [handle.id]


def test_report_round_trips_through_json_and_shows_itself(tmp_path):
    torch.manual_seed(0)
    report = actstat.profile(SmallCNN().eval(), mnist_images(16), labels(16, 10), hist=True,
                             name="my cnn")
    path = report.save(tmp_path / "cnn.json")
    again = read_report(path)
    assert again == report and again.runs[0].model == "SmallCNN"
    assert json.loads(report.to_json())["schema_version"] == 4
    text = str(report)
    assert "my cnn" in text and "bn1" in text and "BatchNorm2d → ReLU" in text
    html = report._repr_html_()
    assert html.count("<table>") == 1 and "<th>module</th>" in html and "bn1" in html
    console = Console(width=80, record=True, color_system=None)
    console.print(report)
    assert all(len(line) <= 80 for line in console.export_text().splitlines())
    assert "my cnn: healthy" in repr(report)


def test_selection_by_class_and_pattern():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    tokens = torch.randint(50, (4, 6))
    names = [layer.name for layer in
             actstat.profile(model, tokens, layers=[nn.LayerNorm, "head"]).runs[0].layers]
    assert names == ["blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_f",
                     "head"]


def test_errors_are_one_line_actstat_errors():
    with pytest.raises(ModelError, match="measures an nn.Module"):
        actstat.profile(lambda x: x, torch.ones(2, 2))
    with pytest.raises(ModelError, match="nothing to measure"):
        actstat.profile(nn.ReLU(), torch.ones(2, 2))
    with pytest.raises(ModelError, match=r"the forward pass failed in 0 \(Linear\) on inputs of "
                       r"shape \(4, 3\)"):
        actstat.profile(nn.Sequential(nn.Linear(5, 2)), torch.ones(4, 3))
    with pytest.raises(ModelError, match="the inputs hold no tensor"):
        actstat.profile(nn.Linear(2, 2), "pixels")
    with pytest.raises(ConfigError, match="thresholds: vanishing"):
        actstat.profile(nn.Linear(2, 2), torch.ones(2, 2), thresholds={"vanishing": -1.0})


def test_thresholds_change_the_flags():
    torch.manual_seed(0)
    model = ResidualMLP()
    x, y = gaussian(64, 20), labels(64, 10)
    assert actstat.profile(model, x, y).runs[0].verdict == "healthy"
    # the stream's start (inp) runs at 0.65 of the input's std, 1.03, and the blocks at
    # 1.0-1.1 of the start; the branch layers at 0.16-0.26, but vanishing is judged on the
    # stream (against its start), and never on the head
    strict = actstat.profile(model, x, y, thresholds={"vanishing": 0.7})
    assert strict.runs[0].verdict == "vanishing"
    flagged = [layer.name for layer in strict.runs[0].layers if layer.flags]
    assert flagged == ["inp"]
    rows = {layer.name: layer for layer in strict.runs[0].layers}
    assert rows["blocks.2"].scale_of == "inp" and rows["inp"].scale_of == "input"
    assert strict.config["thresholds"]["vanishing"] == 0.7


def test_assert_healthy_lists_the_flagged_layers():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    for p in model.parameters():
        nn.init.zeros_(p)
    with pytest.raises(AssertionError) as caught:
        assert_healthy(model, gaussian(16, 10), labels(16, 3))
    message = str(caught.value)
    assert message.splitlines()[0] == "2 flagged layer(s) in Sequential (verdict: symmetric):"
    assert message.splitlines()[1] == ("  0 (Linear → ReLU): symmetric, vanishing, grad_zero, "
                                       "dead — post std 0, dead 100.0%, grad std 0")
    # the head's logits are not held to vanishing (small logits are a calm start)
    assert message.splitlines()[2].startswith("  2 (Linear): symmetric, grad_zero, dead")
    torch.manual_seed(0)
    healthy = ResidualMLP()
    assert isinstance(assert_healthy(healthy, gaussian(64, 20), labels(64, 10)), Report)
    with pytest.raises(ValueError, match="unknown flag"):
        assert_healthy(healthy, gaussian(64, 20), allow={"deadish"})


def test_assert_healthy_allows_named_flags():
    torch.manual_seed(0)
    model = ResidualMLP()
    with torch.no_grad():
        model.blocks[1].fc1.bias[:8] = -100.0  # 8 of 32 units dead: 25 %
    x, y = gaussian(64, 20), labels(64, 10)
    with pytest.raises(AssertionError, match=r"blocks.1.fc1 \(Linear → ReLU\): dead — post std "):
        assert_healthy(model, x, y, thresholds={"dead": 0.2})
    assert_healthy(model, x, y, allow={"dead"}, thresholds={"dead": 0.2})


def test_the_public_names():
    assert set(actstat.__all__) == {"Report", "Thresholds", "__version__", "coord_check",
                                    "profile", "read_report"}
    assert {"coord_check", "profile", "Report", "read_report", "Thresholds"} <= set(dir(actstat))
    assert callable(actstat.coord_check)
    with pytest.raises(AttributeError):
        actstat.measure  # noqa: B018


def test_a_normalisation_row_is_not_held_to_the_input_scale():
    """GPT-2 style: a 0.02-scale embedding (the reference for token ids), then LayerNorm at
    std 1, 50x the embedding: the norm set that scale, so its row is not `exploding`, and the
    Linear after it is judged against the norm's scale (its segment), not the embedding's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 32), nn.LayerNorm(32), nn.Linear(32, 32))
    nn.init.normal_(model[0].weight, std=0.02)
    tokens = torch.randint(50, (8, 12))
    rows = {layer.name: layer for layer in actstat.profile(model, tokens).runs[0].layers}
    assert rows["1"].kind == "norm" and rows["1"].post.std > 10 * rows["0"].post.std
    assert "exploding" not in rows["1"].flags and rows["1"].scale_of is None
    # std(W) 1/sqrt(3·32) on the norm's std-1 output: ~0.58, 29x the embedding, 0.58x the norm
    assert rows["2"].post.std > 10 * rows["0"].post.std
    assert not rows["2"].flags and rows["2"].scale_of == "1"
    with torch.no_grad():
        model[2].weight.mul_(30)  # now 17x its segment's scale
    rows = {layer.name: layer for layer in actstat.profile(model, tokens).runs[0].layers}
    assert "exploding" in rows["2"].flags


def test_compare_views_of_a_model_have_no_theory_columns():
    from actstat.render_compare import compare_markdown, compare_text

    torch.manual_seed(0)
    report = actstat.profile(ResidualMLP(), gaussian(32, 20), labels(32, 10))
    header = compare_markdown(report).splitlines()[4]
    assert header.startswith("| scheme | verdict |") and "phase" not in header
    assert "χ₁" not in header and "grad 1/L" in header
    text = compare_text(report)
    assert "phase" not in text and text.startswith("1 schemes, 11 layers, tensors passed")
