"""actstat.capture against independent captures of the same tensors: each zoo model's `trace`
(tests/models.py) is a plain forward that keeps every intermediate, with no hook and no actstat
code; its tensors' statistics are recomputed here with NumPy in float64, and its gradients come
from autograd's `retain_grad`."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actstat.activations import ACTIVATIONS, GeneralRelu, Identity, make_activation
from actstat.capture import capture, capture_stacked
from actstat.errors import ActstatError, ModelError
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, initialise, stack_mlps
from models import (
    Conv1D,
    FunctionalMLP,
    InplaceResNet,
    ResidualMLP,
    SharedTanh,
    SmallCNN,
    TinyTransformer,
    TransposedLinearNet,
    TupleModel,
    gaussian,
    labels,
    mnist_images,
)

NEAR_ZERO = 0.01  # Thresholds' default


@pytest.fixture(autouse=True)
def both_reductions(reductions):
    """Every test of this file runs on both ways a CPU tensor is reduced (conftest.py's
    `reductions`)."""
    return reductions


def dead_rule(module: nn.Module, kind: str) -> float | str:
    """Where a unit of `module`'s output counts as dead (analysis.py's definition, written out
    independently): a known activation's floor (the value of its flat lower region), "none" for
    a known activation with no flat region, "zero" (exactly 0 throughout) for anything else."""
    if kind not in ("activation", "selected"):
        return "zero"
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardsigmoid)):
        return 0.0
    if isinstance(module, nn.Hardtanh):
        return module.min_val
    if isinstance(module, GeneralRelu):
        return -module.subtract if module.leak == 0 else "none"
    if isinstance(module, (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.SELU,
                           nn.Softplus, nn.Mish, nn.Identity, Identity)):
        return "none"
    return "zero"


def numpy_stats(a: np.ndarray, unit: int, saturated=None, spread=False,
                dead: float | str = "zero") -> dict[str, float]:
    """The statistics of analysis.py's definitions, from a float64 array: population std; dead =
    the fraction of units (entries along `unit`) that sit at `dead` (a floor: never above it;
    "zero": exactly 0) for every sample and position, NaN for "none" (not counted); spread = the
    largest range across units on one sample and position over max|a| (0/0: 0)."""
    per_unit = np.moveaxis(a, unit % a.ndim, 0).reshape(a.shape[unit], -1)
    if dead == "none":
        dead_fraction = math.nan
    elif dead == "zero":
        dead_fraction = np.mean(np.all(per_unit == 0, axis=1))
    else:  # compared in float32, as a float32 network's outputs are
        dead_fraction = np.mean(np.all(per_unit.astype(np.float32) <= np.float32(dead), axis=1))
    stats = {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(),
             "near_zero": np.mean(np.abs(a) < NEAR_ZERO), "abs_mean": np.abs(a).mean(),
             "dead": dead_fraction}
    if spread:
        per_sample = np.moveaxis(a, unit % a.ndim, -1).reshape(-1, a.shape[unit])
        gap = np.max(per_sample.max(axis=1) - per_sample.min(axis=1))
        top = np.max(np.abs(a))
        stats["spread"] = gap / top if top > 0 else 0.0
    if saturated is not None:
        stats["saturated"] = np.mean(saturated(a))
    return stats


def close(got: float | None, want: float, scale: float, rtol: float) -> bool:
    if want != want:  # NaN: not counted
        return got is not None and got != got
    return got is not None and abs(got - want) <= rtol * (abs(want) + abs(scale)) + 1e-30


def expect(model: nn.Module, inputs, targets=None, *, rtol: float = 1e-5, loss=None,
           reference_loss=None, **options):
    """Capture `model` and compare every record with its trace: names, kinds, order, shapes,
    statistics, dL/d(tensor), and the weights' gradients. Returns the capture."""
    twin = copy.deepcopy(model).requires_grad_(True)  # frozen layers get reference gradients
    refs, out = twin.trace(inputs)
    if reference_loss is not None:
        want_loss = reference_loss(out)
    elif targets is not None:
        logits = out.float()
        want_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    else:
        want_loss = out.float().sum()
    want_loss.backward()

    got = capture(model, inputs, targets, loss=loss, **options)
    assert [(layer.name, layer.kind) for layer in got.layers] == [(r.name, r.kind) for r in refs]
    assert close(got.loss, want_loss.item(), 0.0, rtol)
    for layer, ref in zip(got.layers, refs):
        a = ref.tensor.detach().double().numpy()
        assert layer.shape == a.shape, layer.name
        assert layer.unit_dim == ref.unit % a.ndim, layer.name
        module = model.get_submodule(layer.name.split("#")[0].split(":")[0])
        # nn.MultiheadAttention's weight is its in_proj_weight (grad:data)
        attr = "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"
        weight = getattr(module, attr, None)
        # in torch.nn.init's layout (out, in, *kernel): a Conv1D's (in, out) weight swapped
        layout = weight.T if isinstance(module, Conv1D) else weight
        assert layer.weight_shape == (tuple(layout.shape) if layer.kind != "input" and isinstance(
            weight, nn.Parameter) and attr == "weight" else None), layer.name
        want = numpy_stats(a, ref.unit, ref.saturated, spread=ref.kind == "weight",
                           dead=dead_rule(module, layer.kind))
        assert set(layer.stats) == set(want), layer.name
        for key, value in want.items():
            scale = want["std"] if key in ("mean", "std", "min", "max") else 0.0
            assert close(layer.stats[key], value, scale, rtol), (layer.name, key, layer.stats,
                                                                 want)
        if ref.tensor.grad is None:
            assert layer.grad is None, layer.name
            continue
        g = ref.tensor.grad.double().numpy()
        assert close(layer.grad["mean"], g.mean(), g.std(), rtol), (layer.name, layer.grad)
        assert close(layer.grad["std"], g.std(), 0.0, rtol), (layer.name, layer.grad)
        if layer.kind == "input" or not isinstance(weight, nn.Parameter):
            assert "weight_std" not in layer.grad, layer.name
            continue
        w = weight.detach().double().numpy()
        assert close(layer.grad["weight_data_std"], w.std(), 0.0, rtol), layer.name
        if not weight.requires_grad:
            assert layer.grad["weight_std"] is None and layer.grad["grad_to_data"] is None
            continue
        gw = getattr(twin.get_submodule(module_name(model, module)), attr).grad.double().numpy()
        assert close(layer.grad["weight_std"], gw.std(), 0.0, rtol), layer.name
        if w.std() == 0:  # norm layers start with weight 1: no ratio (analysis.py)
            assert layer.grad["grad_to_data"] is None, layer.name
        else:
            assert close(layer.grad["grad_to_data"], gw.std() / w.std(), 0.0, rtol), layer.name
        assert close(layer.grad["weight_min"], gw.min(), gw.std(), rtol), layer.name
        assert close(layer.grad["weight_max"], gw.max(), gw.std(), rtol), layer.name
    return got


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def test_residual_mlp_block_outputs_are_the_stream_and_dead_units_counted():
    torch.manual_seed(0)
    model = ResidualMLP()
    with torch.no_grad():
        model.blocks[1].fc1.bias[:8] = -100.0  # 8 of 32 units never fire: dead 0.25
    got = expect(model, gaussian(64, 20), labels(64, 10))
    assert got.layers[[layer.name for layer in got.layers].index("blocks.1.act")].stats["dead"] \
        == 0.25


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cnn_on_mnist_images_reduces_dead_units_per_channel(train):
    torch.manual_seed(0)
    model = SmallCNN().train(train)
    with torch.no_grad():
        model.bn2.bias[:4] = -50.0  # 4 of 16 channels are 0 after the ReLU: dead >= 0.25
    got = expect(model, mnist_images(32), labels(32, 10))
    relu2 = next(layer for layer in got.layers if layer.name == "relu2")
    assert relu2.unit_dim == 1 and relu2.stats["dead"] >= 0.25  # numpy agreed above


def test_pre_norm_transformer_on_tokens():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    tokens = torch.randint(50, (4, 16), generator=torch.Generator().manual_seed(2))
    expect(model, tokens, torch.roll(tokens, -1, dims=1), rtol=1e-4)


def test_hugging_face_conv1d_is_a_weight_layer_with_its_fans_swapped():
    torch.manual_seed(0)
    model = TransposedLinearNet()
    got = expect(model, gaussian(24, 20), labels(24, 10), rtol=1e-4)
    assert {layer.name: layer.weight_shape for layer in got.layers if layer.kind == "weight"} == {
        "c_in": (16, 20), "blocks.0.c_fc": (64, 16), "blocks.0.c_proj": (16, 64),
        "blocks.1.c_fc": (64, 16), "blocks.1.c_proj": (16, 64), "head": (10, 16)}


def test_functional_relu_is_measured_as_the_next_layers_input():
    torch.manual_seed(0)
    got = expect(FunctionalMLP(), gaussian(40, 12), labels(40, 5))
    assert [layer.name for layer in got.layers][-2:] == ["fc3:input", "fc3"]


def test_an_activation_module_called_twice_gets_two_records_with_saturation():
    torch.manual_seed(0)
    model = SharedTanh()
    with torch.no_grad():
        model.fc2.weight.mul_(8.0)  # the second call saturates
    got = expect(model, gaussian(50, 12), labels(50, 5))
    second = next(layer for layer in got.layers if layer.name == "act#2")
    assert second.stats["saturated"] > 0.3 and "saturated" not in got.layers[0].stats


@pytest.mark.slow  # ~2 s: the process's first convolution backward warms oneDNN up
def test_inplace_relu_after_convolutions_measures_the_conv_output_and_backward_works():
    torch.manual_seed(0)
    model = InplaceResNet().train()
    with torch.no_grad():
        model.stem.bias[:2] = -100.0  # 2 of 8 stem channels die in the in-place ReLU
    got = expect(model, mnist_images(16), labels(16, 10))
    stem, relu = got.layers[0], got.layers[1]
    assert stem.stats["min"] < -50 and relu.stats["min"] == 0.0 and relu.stats["dead"] == 0.25


def test_blocks_that_return_a_tuple_and_a_dict_output():
    torch.manual_seed(0)
    model = TupleModel()
    x, y = gaussian(32, 16), labels(32, 4)
    expect(model, x, y)
    expect(model, x, y, output="logits")
    with pytest.raises(ModelError, match="output='nope'"):
        capture(model, x, y, output="nope")
    with pytest.raises(ModelError, match="no floating-point tensor"):
        capture(nn.Sequential(nn.Linear(3, 3), _Argmax()), gaussian(4, 3))


class _Argmax(nn.Module):
    def forward(self, x):
        return x.argmax(dim=-1)


@pytest.mark.parametrize("frozen", ["some", "all"])
def test_frozen_parameters(frozen):
    torch.manual_seed(0)
    model = ResidualMLP()
    parts = [model.inp, model.blocks[0]] if frozen == "some" else [model]
    for part in parts:
        part.requires_grad_(False)
    got = expect(model, gaussian(32, 20), labels(32, 10))
    assert got.layers[0].grad["weight_std"] is None  # inp's weight is frozen
    assert all(p.grad is None for p in model.parameters())


def test_frozen_blocks_that_return_tuples_get_gradients():
    torch.manual_seed(0)
    model = TupleModel().requires_grad_(False)
    expect(model, gaussian(16, 16), labels(16, 4))


def test_loss_callable_and_sum_without_targets():
    torch.manual_seed(0)
    model, x = ResidualMLP(), gaussian(16, 20)
    expect(model, x)  # the output's sum
    mse = lambda out, t: ((out - t) ** 2).mean()  # noqa: E731
    target = gaussian(16, 10, seed=5)
    expect(model, x, target, loss=mse, reference_loss=lambda out: mse(out, target))


def test_histogram_counts_match_numpy():
    torch.manual_seed(0)
    model = FunctionalMLP()
    x = gaussian(30, 12)
    got = capture(model, x, bins=7, grad=False)
    refs, _ = FunctionalMLP.trace(model, x)
    for layer, ref in zip(got.layers, refs):
        a = ref.tensor.detach().double().numpy()
        counts, _ = np.histogram(a, bins=7, range=(a.min(), a.max()))
        assert layer.histogram == tuple(float(c) for c in counts), layer.name
        assert layer.grad is None
    assert got.loss is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("make", [ResidualMLP,
                                  pytest.param(SmallCNN, marks=pytest.mark.slow)],  # 1.5 s each
                         ids=["mlp", "cnn"])
def test_half_precision(dtype, make):
    torch.manual_seed(0)
    model = make().to(dtype)
    x = mnist_images(8, dtype) if make is SmallCNN else gaussian(32, 20, dtype=dtype)
    try:
        model(x)
    except RuntimeError as error:  # e.g. a CPU build without float16 convolutions
        pytest.skip(f"{dtype} forward not supported here: {error}")
    # the statistics are reduced in float32 from the same half-precision values: 1e-5 holds
    expect(model, x, labels(x.shape[0], 10))


def _state(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: (p.grad, None if p.grad is None else p.grad.clone())
                  for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: [dict(getattr(m, a)) for a in HOOK_DICTS]
                  for n, m in model.named_modules()},
    }


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
              "_backward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for name, (tensor, values) in before["grads"].items():
        tensor_after, values_after = after["grads"][name]
        assert tensor_after is tensor, name  # the very tensor the user had
        assert (values is None) == (values_after is None) and (
            values is None or torch.equal(values, values_after)), name
    for key in ("requires_grad", "training", "hooks"):
        assert before[key] == after[key], key


def test_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = SmallCNN().train()
    model.eval().bn2.train()  # mixed modes: each module's mode comes back
    model.conv1.requires_grad_(False)
    x, y = mnist_images(16), labels(16, 10)
    F.cross_entropy(model(x), y).backward()  # the user's own .grad, which must survive
    model.fc.register_forward_hook(lambda *args: None)
    model.bn1.register_forward_pre_hook(lambda *args: None)
    before = _state(model)
    got = capture(model, x, y, bins=4)
    assert got.layers and model.bn2.num_batches_tracked.item() == 1
    _assert_same(before, _state(model))


class _Fails(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bad = nn.Linear(5, 2)

    def forward(self, x):
        return self.bad(self.fc(x))


def test_hooks_removed_and_state_restored_when_the_forward_raises():
    model = _Fails().train()
    bn_model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), _Fails())
    for m in (model, bn_model):
        before = _state(m)
        with pytest.raises(ModelError, match=r"failed in (bad|2\.bad) \(Linear\) on inputs of "
                                             r"shape \(6, 4\): RuntimeError"):
            capture(m, gaussian(6, 4))
        _assert_same(before, _state(m))


def test_nothing_measurable_is_a_clear_error():
    with pytest.raises(ActstatError, match="nothing to measure in Sequential.*layers="):
        capture(nn.Sequential(nn.ReLU(), nn.Tanh()), gaussian(3, 4))
    with pytest.raises(ModelError, match="no module of SmallCNN matched layers="):
        capture(SmallCNN(), mnist_images(2), layers="nothing.*")
    with pytest.raises(ModelError, match="layers= takes"):
        capture(SmallCNN(), mnist_images(2), layers=[3])


def test_selection_by_type_and_by_name_pattern():
    torch.manual_seed(0)
    cnn, images = SmallCNN(), mnist_images(4)
    got = capture(cnn, images, layers=nn.Conv2d, grad=False)
    assert [(layer.name, layer.kind) for layer in got.layers] == [("conv1", "weight"),
                                                                  ("conv2", "weight")]
    pools = capture(cnn, images, layers=[nn.MaxPool2d], grad=False).layers
    assert [(p.name, p.kind, p.unit_dim, p.shape) for p in pools] == [
        ("pool", "selected", 1, (4, 8, 14, 14)), ("pool#2", "selected", 1, (4, 16, 7, 7))]
    transformer = TinyTransformer()
    tokens = torch.randint(50, (2, 8))
    names = [layer.name for layer in capture(transformer, tokens, layers="blocks.1.*").layers]
    assert names == ["blocks.1.ln1", "blocks.1.attn", "blocks.1.ln2", "blocks.1.fc1",
                     "blocks.1.act", "blocks.1.fc2"]


def test_one_host_copy_per_pass(monkeypatch):
    """No .item() per statistic: every number reaches the host in one tolist()."""
    calls = {"tolist": 0}
    tolist = torch.Tensor.tolist

    def counted(self):
        calls["tolist"] += 1
        return tolist(self)

    def forbidden(self):
        raise AssertionError(".item() during a capture")

    model, x, y = InplaceResNet(), mnist_images(4), labels(4, 10)
    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    got = capture(model, x, y, bins=5)
    assert calls["tolist"] == 1 and len(got.layers) > 10


class _Kwargs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x, *, shift):
        return self.fc(x + shift)


def test_inputs_as_positional_tuple_and_keyword_dict():
    torch.manual_seed(0)
    model, x, shift = _Kwargs(), gaussian(5, 6), gaussian(5, 6, seed=3)
    by_dict = capture(model, {"x": x, "shift": shift})
    want = (x + shift).double().numpy()
    assert by_dict.layers[0].name == "fc:input"
    assert close(by_dict.layers[0].stats["std"], want.std(), 0.0, 1e-6)
    pair = (gaussian(7, 2), gaussian(7, 3, seed=4))
    got = capture(_TwoInputs(), pair, grad=False)
    assert [layer.name for layer in got.layers] == ["fc:input", "fc"]
    assert got.layers[0].shape == (7, 5)
    with pytest.raises(ModelError, match=r"failed in Sequential \(Sequential\) on inputs of "
                                         r"shape \(7, 2\), \(7, 3\): TypeError"):
        capture(nn.Sequential(nn.Linear(2, 2)), pair)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, a, b):
        return self.fc(torch.cat([a, b], dim=1))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_containers_and_dropout_hand_the_tensor_on_to_its_consumer(train):
    """Linear -> Dropout -> ReLU, and Linear -> Sequential(ReLU, Linear): the ReLU is the
    consumer both times (in train mode dropout makes a new tensor, handed on all the same)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 8),
                          nn.Sequential(nn.ReLU(), nn.Linear(8, 2))).train(train)
    got = capture(model, gaussian(16, 4))
    assert [(layer.name, layer.kind) for layer in got.layers] == [
        ("0", "weight"), ("2", "activation"), ("3", "weight"),
        ("4.0", "activation"), ("4.1", "weight")]
    assert model.training == train and model[1].training == train


class _DataAndReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x, y):
        return self.fc(x) + self.fc2(y.reshape(y.shape[0], -1))


def test_the_data_itself_is_no_input_record_but_a_reshape_of_it_is():
    """The Report carries the data's statistics: a weight layer fed the model's own input
    tensor (passed alone, in a tuple or in a dict) gets no input record; one fed a reshape of
    it (a new tensor) does."""
    torch.manual_seed(0)
    model, x, y = _DataAndReshape(), gaussian(5, 6), gaussian(5, 2, 3, seed=3)
    for inputs in ((x, y), [x, y], {"x": x, "y": y}):
        got = capture(model, inputs, grad=False).layers
        assert [(r.name, r.kind) for r in got] == [("fc", "weight"), ("fc2:input", "input"),
                                                   ("fc2", "weight")]
        assert close(got[1].stats["std"], y.double().numpy().std(), 0.0, 1e-6)
    alone = capture(nn.Sequential(nn.Linear(6, 3)), x).layers
    assert [(r.name, r.kind) for r in alone] == [("0", "weight")]


class _Guarded(nn.Module):
    """Catches its first layer's failure and goes on, as some models' fallbacks do."""

    def __init__(self):
        super().__init__()
        self.strict = nn.Linear(3, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        try:
            x = self.strict(x)
        except RuntimeError:
            x = torch.zeros(x.shape[0], 4)
        return self.fc(x)


def test_a_caught_failure_inside_the_forward_does_not_confuse_the_names():
    got = capture(_Guarded(), gaussian(3, 5), grad=False)
    assert [(layer.name, layer.kind) for layer in got.layers] == [("fc:input", "input"),
                                                                  ("fc", "weight")]
    whole = capture(_Guarded(), gaussian(3, 5), layers=_Guarded, grad=False).layers
    assert [(layer.name, layer.kind, layer.shape) for layer in whole] == [("_Guarded", "selected",
                                                                          (3, 2))]


# ---- the built-in MLP through the general probe ----------------------------------------------


# every registered activation at its defaults, and with the parameters that move its floor, its
# slope or its clamp
MLP_ACTIVATIONS = [(name, {}) for name in ACTIVATIONS] + [
    ("general_relu", {"subtract": 0.5}), ("general_relu", {"leak": 0.1, "subtract": 0.4}),
    ("general_relu", {"subtract": 0.2, "clamp_max": 0.6}), ("leaky_relu", {"negative_slope": 0.3}),
    ("elu", {"alpha": 0.5}), ("softplus", {"beta": 3.0}), ("gelu", {"approximate": "tanh"})]


@pytest.mark.parametrize("name, params", MLP_ACTIVATIONS,
                         ids=[f"{n}{p or ''}" for n, p in MLP_ACTIVATIONS])
def test_the_builtin_mlp_alone_and_stacked_equals_numpy(name, params):
    """The built-in MLP, as `run` measures it: each alone (`capture`) and side by side
    (`capture_stacked` of `stack_mlps`), every record's statistics equal NumPy's on the
    layer's output from a plain forward (dead by the activation's floor, see `dead_rule`), and
    the stacked numbers equal the separate ones, gradients included."""
    activation = make_activation(name, params)
    models = [initialise(
        build_mlp(in_features=32, widths=[24, 24, 24], num_classes=10, bias=True,
                  activation=activation),
        make_init(init), make_bias_init("normal"), act_gain=activation.gain, seed=1,
        device=torch.device("cpu"), dtype=torch.float64) for init in ("kaiming", "randn")]
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(128, 32, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (128,), generator=generator)
    alone = [capture(model, inputs, labels) for model in models]
    stacked = capture_stacked(stack_mlps(models), inputs, labels, groups=2)
    for model, one, side in zip(models, alone, stacked, strict=True):
        outputs, x = {}, inputs
        with torch.no_grad():
            for index, module in enumerate(model):
                x = module(x)
                outputs[str(index)] = (module, x.numpy())
        # every module of the MLP is a record: the identity activation too (not a pass-through)
        assert [r.name for r in one.layers] == list(outputs)
        assert one.loss == pytest.approx(F.cross_entropy(x, labels).item(), rel=1e-12)
        for record, twin in zip(one.layers, side.layers, strict=True):
            module, a = outputs[record.name]
            want = numpy_stats(a, -1, spread=record.kind == "weight",
                               dead=dead_rule(module, record.kind))
            for key, value in want.items():
                assert close(record.stats[key], value, want["std"], 1e-10), (record.name, key)
            assert twin.name == record.name and twin.stats.keys() == record.stats.keys()
            for key, value in record.stats.items():
                assert twin.stats[key] == pytest.approx(value, rel=1e-9, abs=1e-12,
                                                        nan_ok=True), (record.name, key)
            for key, value in record.grad.items():
                assert twin.grad[key] == pytest.approx(value, rel=1e-9, abs=1e-15,
                                                       nan_ok=True), (record.name, key)


# ---- spread: the symmetric flag's statistic, on weight records --------------------------------


@pytest.mark.parametrize("init", ["zeros", "constant", "random"])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_weight_records_carry_the_unit_spread(layer, init):
    """Zero and constant weights make every unit compute the same value (spread 0: symmetric,
    an all-zero output included); random weights do not. Checked against NumPy on the layer's
    own output, units on the last dim (Linear) and on the channels (Conv2d)."""
    torch.manual_seed(0)
    if layer == "linear":
        model, x, unit = nn.Linear(12, 16), gaussian(20, 12), -1
    else:
        model, x, unit = nn.Conv2d(3, 8, 3, padding=1), gaussian(6, 3, 9, 9), 1
    with torch.no_grad():
        if init != "random":
            model.weight.fill_(0.0 if init == "zeros" else 0.3)
            model.bias.fill_(0.0 if init == "zeros" else -0.1)
    got = capture(model, x, grad=False).layers
    assert [(r.name, r.kind) for r in got] == [(type(model).__name__, "weight")]
    with torch.no_grad():
        want = numpy_stats(model(x).double().numpy(), unit, spread=True)["spread"]
    assert close(got[0].stats["spread"], want, 0.0, 1e-6), (got[0].stats, want)
    if init == "random":
        assert got[0].stats["spread"] > 0.1
    else:  # every unit computes exactly the same number; zeros: 0/0 taken as 0
        assert got[0].stats["spread"] == 0.0
        assert (got[0].stats["max"] == got[0].stats["min"] == 0.0) == (init == "zeros")


# ---- chunked reductions ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [ResidualMLP, SharedTanh, SmallCNN], ids=["mlp", "tanh", "cnn"])
def test_tensors_reduced_in_many_chunks_give_the_same_numbers(monkeypatch, make):
    """capture reduces a tensor a chunk of samples at a time and combines the chunks (Chan's
    update for mean and std): with chunks of 100 elements every tensor of the zoo spans many of
    them, the last one shorter, and NumPy's whole-tensor numbers still hold."""
    import actstat.capture
    import actstat.fused

    monkeypatch.setattr(actstat.capture, "CHUNK", 100)
    monkeypatch.setattr(actstat.fused, "SEGMENT", 7)  # rows of 12 to 784 values: many segments
    torch.manual_seed(0)
    model = make()
    x, classes = {ResidualMLP: (gaussian(37, 20), 10), SharedTanh: (gaussian(37, 12), 5),
                  SmallCNN: (mnist_images(10), 10)}[make]
    expect(model, x, labels(x.shape[0], classes))


@pytest.mark.parametrize("magnitude", [1e20, 1e-25])
def test_extreme_magnitudes_keep_a_finite_exact_std(monkeypatch, magnitude):
    """Squares of 1e20 overflow float32 and squares of 1e-25 underflow to 0: each chunk is
    scaled by its own max|x| before squaring, so the std is still NumPy's."""
    import actstat.capture
    import actstat.fused

    monkeypatch.setattr(actstat.capture, "CHUNK", 64)
    monkeypatch.setattr(actstat.fused, "SEGMENT", 5)
    torch.manual_seed(0)
    model = nn.Linear(8, 16, bias=False)
    x = gaussian(50, 8) * magnitude
    got = capture(model, x, grad=False).layers[0]
    with torch.no_grad():
        a = model(x).double().numpy()
    want = numpy_stats(a, -1, spread=True)
    assert np.isfinite(want["std"]) and want["std"] > 0
    for key, value in want.items():
        scale = want["std"] if key in ("mean", "std", "min", "max") else 0.0
        assert close(got.stats[key], value, scale, 1e-5), (key, got.stats, want)


# ---- the fused (C kernel) reductions ----------------------------------------------------------


def test_float32_cpu_tensors_take_the_path_under_test(monkeypatch, reductions):
    """The fixture's two paths are really taken: the kernels reduce every float32 tensor of a
    capture (outputs, gradients, weights) on the fused path and none on the torch path."""
    import actstat.capture

    reduced = []
    real = actstat.capture._fused_row
    monkeypatch.setattr(actstat.capture, "_fused_row",
                        lambda *a, **k: reduced.append(real(*a, **k)) or reduced[-1])
    torch.manual_seed(0)
    x = gaussian(16, 20)
    got = capture(ResidualMLP(), x, labels(16, 10))
    measured = len(got.layers) + sum(layer.grad is not None for layer in got.layers)
    if reductions == "fused":
        assert len(reduced) >= measured and all(row is not None for row in reduced)
    else:
        assert not reduced


def test_the_kernel_is_built_where_a_compiler_exists_and_can_be_turned_off():
    """`pip install` builds actstat._kernels where a C compiler is found (a silent build
    failure would leave every user on the slower path); ACTSTAT_KERNELS=0 turns it off."""
    import shutil
    import subprocess
    import sys

    import actstat.fused

    if shutil.which("cc") or shutil.which("gcc"):
        assert actstat.fused.AVAILABLE
    code = "import actstat.fused as f; print(f.ENABLED)"
    env = {k: v for k, v in os.environ.items() if k != "ACTSTAT_KERNELS"}
    for value, want in [(None, str(actstat.fused.AVAILABLE)), ("1", str(actstat.fused.AVAILABLE)),
                        ("0", "False")]:
        extra = {} if value is None else {"ACTSTAT_KERNELS": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**env, **extra}, check=True)
        assert out.stdout.strip() == want, out


def test_thresholds_are_compared_as_torch_compares_float32(reductions):
    """Values exactly at, and one float32 step either side of, the near-zero threshold and
    the saturation edges (two-sided Hardtanh, one-sided ELU): counted as NumPy counts them in
    float32 (|x| < float32(0.01); |x - mid| >= half-width; x <= lo)."""
    near = np.float32(NEAR_ZERO)
    values = [0.0, -0.0, near, -near, np.nextafter(near, np.float32(0)),
              np.nextafter(-near, np.float32(0)), np.nextafter(near, np.float32(1)), 0.5,
              1.0, -1.0, np.nextafter(np.float32(1), np.float32(0)), 2.0, -3.0, -0.97, -0.96]
    column = torch.tensor(np.array(values, dtype=np.float32)).reshape(-1, 1)
    for act, rule in [
            (nn.Hardtanh(), lambda a: np.abs(a - np.float32(0)) >= np.float32(1)),
            # ELU's edge: -alpha + (1 - cut) * alpha = -0.97, float32 as probe compares it
            (nn.ELU(), lambda a: a <= np.float32(-1.0 + 0.03 * 1.0))]:
        linear = nn.Linear(1, len(values), bias=False)
        with torch.no_grad():
            linear.weight.copy_(column)
        model = nn.Sequential(linear, act)
        x = torch.ones(3, 1)
        got = capture(model, x, grad=False).layers
        out = model(x).detach().numpy()
        pre = linear(x).detach().numpy()
        # the torch path's fractions are float32 means: equal to 1e-6, not exactly
        assert got[0].stats["near_zero"] == pytest.approx(np.mean(np.abs(pre) < near), 1e-6)
        assert got[1].stats["saturated"] == pytest.approx(np.mean(rule(out)), 1e-6), act


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_a_tensor_with_nan_or_inf_gives_the_torch_paths_numbers(monkeypatch, reductions, poison):
    """A diverged layer: the kernels' numbers are discarded for a non-finite tensor and torch
    reduces it, so both paths report the same NaN, inf and finite fractions."""
    import actstat.capture

    if reductions == "torch":
        pytest.skip("compares the fused path with the torch path")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight[2, 1] = poison
    x = gaussian(10, 6)

    def numbers():
        return [{**layer.stats, **(layer.grad or {})}
                for layer in capture(model, x, labels(10, 4)).layers]

    fused = numbers()
    monkeypatch.setattr(actstat.fused, "ENABLED", False)
    # a finite tensor (the other weights) differs by the torch path's float32 rounding only
    for got, want in zip(fused, numbers(), strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert (got[key] is None if value is None
                    else got[key] == pytest.approx(value, rel=1e-6, nan_ok=True)), key
    assert any(math.isnan(v) or math.isinf(v) for v in fused[0].values() if v is not None)


def test_std_of_a_large_offset_is_exact_to_float64(reductions):
    """Values 1e4 + N(0, 1e-3) (mean far from 0, std small): the fused path's std matches
    NumPy's float64 std to 1e-9 (each segment centred on its own mean before squaring, the
    blocks of its sums combined in float64); the torch path's, centred on a float32 mean, to
    1e-5."""
    torch.manual_seed(0)
    model = nn.Linear(4, 256, bias=True)
    with torch.no_grad():
        model.weight.mul_(1e-3)
        model.bias.fill_(1e4)
    x = gaussian(300, 4)
    got = capture(model, x, grad=False).layers[0].stats
    a = model(x).detach().double().numpy()
    rtol = 1e-9 if reductions == "fused" else 1e-5
    assert abs(got["std"] - a.std()) <= rtol * a.std()
    assert abs(got["mean"] - a.mean()) <= 1e-9 * abs(a.mean())


class Transposed(nn.Module):
    """A batch-first output made as nn.MultiheadAttention makes it: (L, N, E) transposed."""

    def forward(self, x):
        return torch.tanh(x).transpose(0, 1)


def test_a_transposed_output_is_read_in_place_with_the_numbers_of_its_copy(monkeypatch):
    """A transposed output's rows are read in the order of its memory (no copy made of it), and
    its numbers are those of the same tensor made contiguous, as NumPy takes them."""
    import actstat.capture as engine

    x = torch.randn(7, 5, 6, generator=torch.Generator().manual_seed(0))
    out = torch.tanh(x).transpose(0, 1)
    rows = engine._rows(out)
    assert rows.is_contiguous() and rows.data_ptr() == out.data_ptr()
    assert not engine._rows(torch.randn(4, 6, 5)[:, ::2]).is_contiguous()  # strided: as it is
    got = capture(Transposed(), x, grad=False, layers=Transposed).layers[-1].stats
    a = np.tanh(x.double().numpy())
    assert got["mean"] == pytest.approx(a.mean(), abs=1e-7)
    assert got["std"] == pytest.approx(a.std(), rel=1e-6)
    assert (got["min"], got["max"]) == pytest.approx((a.min(), a.max()), rel=1e-6)
