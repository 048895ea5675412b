"""The built-in MLP measured by the engine (actstat/capture.py): every statistic against NumPy on
arrays of a plain forward (no hooks), gradients against autograd; hooks scoped; robust
reductions (actstat/reduce.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from actstat.activations import ACTIVATIONS, make_activation
from actstat.analysis import analyse_captured, head_row, pair_rows, signal_rows
from actstat.capture import capture
from actstat.config import Thresholds, load_config
from actstat.errors import ModelError
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, hidden_linears, initialise
from actstat.pipeline import profile
from actstat.reduce import moments
from reference import NUMPY, SELU_A, SELU_L

NEAR_ZERO, CUT = 0.05, 0.97
THRESHOLDS = Thresholds(near_zero=NEAR_ZERO, saturation_cut=CUT)
MARGIN = 1 - CUT
# where each bounded activation's output counts as saturated, written out from the definition
# (analysis.py: within (1 - cut) of an end of the range, in units of its half-range)
SATURATED = {
    "tanh": lambda post: np.abs(post) >= CUT,
    "sigmoid": lambda post: (post <= MARGIN * 0.5) | (post >= 1 - MARGIN * 0.5),
    "selu": lambda post: post <= -SELU_L * SELU_A + MARGIN * SELU_L * SELU_A,
    "elu": lambda post: post <= -1 + MARGIN,
    "softplus": lambda post: post <= MARGIN,
}
# the registered activations with a flat lower region (default parameters) and its value there
FLOOR = {"relu": 0.0, "general_relu": 0.0}


def model_and_batch(act: str, *, init: str = "kaiming", dtype=torch.float64, widths=(13, 9, 11),
                    params: dict | None = None, bias: str = "normal"):
    activation = make_activation(act, params)
    model = build_mlp(in_features=17, widths=list(widths), num_classes=4, bias=True,
                      activation=activation)
    model = initialise(model, make_init(init), make_bias_init(bias), act_gain=activation.gain,
                       seed=0, device=torch.device("cpu"), dtype=dtype)
    x = torch.randn(37, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x.to(dtype), activation


def numpy_fn(act: str, params: dict | None = None):
    if act != "general_relu":
        return NUMPY[act]
    p = {"leak": 0.0, "subtract": 0.0, "clamp_max": None, **(params or {})}
    return lambda h: np.minimum(np.where(h > 0, h, p["leak"] * h) - p["subtract"],
                                np.inf if p["clamp_max"] is None else p["clamp_max"])


def numpy_layers(model: nn.Module, x: torch.Tensor, act: str, params: dict | None = None):
    """(pre, post) of every hidden layer, computed in float64 NumPy from the model's weights."""
    fn = numpy_fn(act, params)
    h = x.double().numpy()
    layers = []
    for linear in hidden_linears(model):
        pre = h @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()
        h = fn(pre)
        layers.append((pre, h))
    return layers


def plain_forward(model: nn.Module, x: torch.Tensor):
    """(pre, post) of every hidden layer and the logits, from a forward with no hook, in the
    model's own dtype, as float64 arrays."""
    outputs = []
    with torch.no_grad():
        h = x
        for module in model:
            h = module(h)
            outputs.append(h.double().numpy())
    pairs = list(zip(outputs[0:-1:2], outputs[1:-1:2]))
    return pairs, outputs[-1]


def numpy_stats(a: np.ndarray, floor: float | str | None) -> dict[str, float]:
    """analysis.py's definitions: population std; near-zero |a| < NEAR_ZERO; dead = the fraction
    of units (columns) at `floor` (never above it) for every sample, "zero": exactly 0
    throughout, None: not counted (NaN)."""
    if floor is None:
        dead = math.nan
    elif floor == "zero":
        dead = np.mean(np.all(a == 0, axis=0))
    else:
        dead = np.mean(np.all(a <= floor, axis=0))
    return {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(),
            "near_zero": np.mean(np.abs(a) < NEAR_ZERO), "abs_mean": np.abs(a).mean(),
            "dead": dead}


def spread(a: np.ndarray) -> float:
    """The `symmetric` flag's statistic: the largest range across units on one sample over
    max|a|."""
    top = np.abs(a).max()
    return float((a.max(axis=1) - a.min(axis=1)).max() / top) if top else 0.0


def assert_stats(have: dict[str, float], want: dict[str, float], rtol: float, what: str):
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(have[key]), (what, key)
        else:
            assert have[key] == pytest.approx(value, rel=rtol, abs=rtol), (what, key)


def measured(model, x, targets=None, **options):
    return capture(model, x, targets, thresholds=THRESHOLDS, **{"grad": False, **options})


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)],
                         ids=["float64", "float32"])
def test_statistics_match_numpy(act, dtype, rtol):
    model, x, activation = model_and_batch(act, dtype=dtype)
    records = measured(model, x).layers
    weights = [r for r in records if r.kind == "weight"]
    activations = [r for r in records if r.kind == "activation"]
    hidden = numpy_layers(model, x, act)
    with torch.no_grad():
        logits = model(x).double().numpy()  # a plain forward, no hook
    assert len(weights) == 4  # three hidden layers and the head
    for record, (pre, _) in zip(weights, [*hidden, (logits, None)]):
        want = numpy_stats(pre, "zero") | {"spread": spread(pre)}
        assert set(record.stats) == set(want), record.name
        assert_stats(record.stats, want, rtol, record.name)
    assert len(activations) == 3  # the identity's too: an activation, not a pass-through
    for record, (_, post) in zip(activations, hidden):
        want = numpy_stats(post, FLOOR.get(act))
        if act in SATURATED:
            want["saturated"] = np.mean(SATURATED[act](post))
        assert set(record.stats) == set(want), record.name
        assert_stats(record.stats, want, rtol, record.name)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_hidden_row_is_its_linear_then_its_activation_and_the_head_comes_last(act):
    """run's rows of the MLP: layer k's pre is its Linear's output and post its activation's
    (the identity's too: its rows read as every other activation's), then the head."""
    model, x, _ = model_and_batch(act)
    rows = analyse_captured(measured(model, x).layers, input_std=1.0, thresholds=THRESHOLDS)
    pairs, logits = plain_forward(model, x)
    assert [row.index for row in rows] == [1, 2, 3, 4]
    assert head_row(rows) is rows[-1] and list(signal_rows(rows)) == list(rows[:3])
    module = type(model[1]).__name__
    for row, (pre, post) in zip(rows[:3], pairs):
        assert row.module == f"Linear → {module}"
        assert row.pre is not None and row.pre.std == pytest.approx(pre.std(), rel=1e-10)
        assert row.post.std == pytest.approx(post.std(), rel=1e-10)
        assert (row.post.dead is None) == (act not in FLOOR), "dead only where it has a floor"
    assert rows[-1].pre is None and rows[-1].post.std == pytest.approx(logits.std(), rel=1e-10)
    assert (rows[-1].fan_in, rows[-1].fan_out) == (11, 4)


def test_dead_units_are_units_zero_for_every_sample():
    # a bias of -1 at lecun scale kills many relu units
    model, x, _ = model_and_batch("relu", init="lecun", bias="normal")
    with torch.no_grad():
        for linear in hidden_linears(model):
            linear.bias.fill_(-1.0)
    rows = analyse_captured(measured(model, x).layers, input_std=1.0, thresholds=THRESHOLDS)
    fractions = [row.post.dead for row in signal_rows(rows)]
    for fraction, (_, post) in zip(fractions, numpy_layers(model, x, "relu"), strict=True):
        assert fraction == pytest.approx(np.mean((post == 0).all(axis=0)))
    assert max(fractions) > 0.2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_dead_units_of_relu_minus_half_sit_at_minus_half(dtype):
    """A dead unit of relu(x) - 0.5 outputs -0.5, not 0: counted by its output at the floor."""
    params = {"subtract": 0.5}
    model, x, _ = model_and_batch("general_relu", init="lecun", params=params, dtype=dtype)
    with torch.no_grad():
        for linear in hidden_linears(model):
            linear.bias.fill_(-1.0)
    rows = analyse_captured(measured(model, x).layers, input_std=1.0, thresholds=THRESHOLDS)
    pairs, _ = plain_forward(model, x)
    fractions = [row.post.dead for row in signal_rows(rows)]
    for fraction, (_, post) in zip(fractions, pairs, strict=True):
        assert fraction == pytest.approx(np.mean((post == -0.5).all(axis=0)))
        assert fraction == pytest.approx(np.mean((post == 0).all(axis=0)) + np.mean(
            (post == -0.5).all(axis=0)))  # (no unit of relu - 0.5 is 0 throughout)
    assert max(fractions) > 0.2


def test_relu_minus_half_reports_its_dead_units_through_the_pipeline():
    """The issue's lesson setting (relu - 0.5, kaiming, depth 20, width 50): `run` reports the
    dead units that sit at -0.5 (up to ~22 % at layer 20), not 0 % as an exactly-0 rule would."""
    config = load_config(None, {"init": ["kaiming"], "activation": [
        {"name": "general_relu", "subtract": 0.5}], "model.depth": 20, "model.width": 50,
        "device": "cpu", "grad": False, "theory": False})
    run = profile(config).runs[0]
    deads = [layer.post.dead for layer in signal_rows(run.layers)]
    assert len(deads) == 20 and all(d is not None for d in deads)
    assert 0.05 < max(deads) <= 0.5


def test_a_leaky_general_relu_has_no_dead_count():
    """general_relu with a leak has no flat region: no unit can die (None), however negative
    its pre-activations."""
    params = {"leak": 0.1, "subtract": 0.5}
    model, x, _ = model_and_batch("general_relu", init="lecun", params=params)
    with torch.no_grad():
        for linear in hidden_linears(model):
            linear.bias.fill_(-5.0)
    records = measured(model, x).layers
    assert all(math.isnan(r.stats["dead"]) for r in records if r.kind == "activation")
    rows = analyse_captured(records, input_std=1.0, thresholds=THRESHOLDS)
    assert all(row.post.dead is None and "dead" not in row.flags for row in signal_rows(rows))


def test_a_clamp_is_saturation_not_death():
    """Every unit held at general_relu's clamp_max for every sample: saturated, none dead."""
    params = {"clamp_max": 0.5}
    model, x, _ = model_and_batch("general_relu", init="lecun", params=params)
    with torch.no_grad():
        for linear in hidden_linears(model):
            linear.bias.fill_(5.0)
    rows = analyse_captured(measured(model, x).layers, input_std=1.0, thresholds=THRESHOLDS)
    for row, (_, post) in zip(signal_rows(rows), numpy_layers(model, x, "general_relu", params),
                              strict=True):
        assert (post == 0.5).all()  # the setting holds: every value at the clamp
        assert row.post.dead == 0.0 and row.post.saturated == 1.0
        assert "saturated" in row.flags and "dead" not in row.flags


@pytest.mark.parametrize("act, params, saturated", [
    ("tanh", {}, SATURATED["tanh"]),
    ("sigmoid", {}, SATURATED["sigmoid"]),
    ("general_relu", {"clamp_max": 0.5}, lambda post: post >= 0.5),
])
def test_saturated_fraction_matches_numpy(act, params, saturated):
    model, x, _ = model_and_batch(act, init="randn", params=params)
    records = [r for r in measured(model, x).layers if r.kind == "activation"]
    for record, (_, post) in zip(records, numpy_layers(model, x, act, params), strict=True):
        assert record.stats["saturated"] == pytest.approx(np.mean(saturated(post)))
    assert max(r.stats["saturated"] for r in records) > 0.3


def test_symmetric_spread_is_zero_for_constant_weights():
    model, x, _ = model_and_batch("tanh", init="constant", bias="zeros")
    weights = [r for r in measured(model, x).layers if r.kind == "weight"]
    assert len(weights) == 4 and all(r.stats["spread"] < 1e-12 for r in weights)
    model, x, _ = model_and_batch("tanh")
    weights = [r for r in measured(model, x).layers if r.kind == "weight"]
    for record, (pre, _) in zip(weights, numpy_layers(model, x, "tanh")):
        assert record.stats["spread"] == pytest.approx(spread(pre), rel=1e-10)
        assert record.stats["spread"] > 0.1


def test_moments_stay_finite_for_huge_finite_values():
    x = torch.randn(300, 300, generator=torch.Generator().manual_seed(0)) * 1e30 + 3e29
    mean, std, lo, hi, _ = (float(v) for v in moments(x, 0.0))
    reference = x.double().numpy()
    assert std == pytest.approx(reference.std(), rel=1e-5)
    assert mean == pytest.approx(reference.mean(), rel=1e-4)
    assert (lo, hi) == (reference.min(), reference.max())


def test_moments_of_a_constant_tensor_have_zero_std():
    mean, std, *_ = (float(v) for v in moments(torch.full((50, 40), 0.1), 0.0))
    assert std == 0.0 and mean == pytest.approx(0.1)


def test_moments_of_half_precision_accumulate_in_float32():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)).half()
    stats = moments(x, 0.0)
    assert all(v.dtype == torch.float32 for v in stats)
    assert float(stats[1]) == pytest.approx(x.double().numpy().std(), rel=1e-5)


def test_nonfinite_values_show_in_min_and_max():
    x = torch.randn(10, 10, generator=torch.Generator().manual_seed(0))
    finite_min = float(x.min())
    x[3, 4] = float("inf")
    _, _, lo, hi, _ = (float(v) for v in moments(x, 0.0))
    assert (lo, hi) == (finite_min, float("inf"))  # one inf leaves the minimum as it was
    x[7, 1] = float("-inf")
    _, _, lo, hi, _ = (float(v) for v in moments(x, 0.0))
    assert (lo, hi) == (float("-inf"), float("inf"))


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken on purpose")


def hooks_of(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


@pytest.mark.parametrize("training", [True, False])
def test_hooks_are_removed_and_mode_restored_even_on_error(training):
    model, x, _ = model_and_batch("relu")
    model[1].register_forward_hook(lambda m, a, out: None)  # the user's own: kept
    model.train(training)
    before = hooks_of(model)
    assert sum(before) == 1
    capture(model, x)
    capture(model, x, torch.zeros(37, dtype=torch.long))
    assert hooks_of(model) == before
    assert all(m.training == training for m in model.modules())
    with pytest.raises(ModelError, match="shape"):
        capture(model, x[:, :5])  # the first Linear raises
    assert hooks_of(model) == before
    assert all(m.training == training for m in model.modules())
    broken = nn.Sequential(*model[:3], Raises(), *model[3:]).train(training)
    with pytest.raises(ModelError, match="broken on purpose"):
        capture(broken, x, torch.zeros(37, dtype=torch.long))
    assert sum(hooks_of(broken)) == 1 and len(model[1]._forward_hooks) == 1
    assert all(m.training == training for m in broken.modules())
    assert all(p.grad is None for p in broken.parameters())


def test_without_grad_no_autograd_graph_is_built():
    model, x, _ = model_and_batch("relu", dtype=torch.float32)
    seen = []
    model[0].register_forward_hook(lambda m, a, out: seen.append((out.requires_grad,
                                                                  out.grad_fn)))
    captured = capture(model, x, torch.zeros(37, dtype=torch.long), grad=False)
    assert seen == [(False, None)]
    assert captured.loss is None and all(layer.grad is None for layer in captured.layers)
    assert all(p.grad is None for p in model.parameters())


def autograd_reference(model: nn.Module, x: torch.Tensor, labels: torch.Tensor):
    """The same quantities by plain autograd: retain_grad on every module's output; per
    Linear (the head included): dL/d(its output), dL/dW, W; per activation: dL/d(its output)."""
    model.zero_grad(set_to_none=True)
    outputs, h = [], x
    for module in model:
        h = module(h)
        h.retain_grad()
        outputs.append(h)
    loss = nn.functional.cross_entropy(h, labels)
    loss.backward()
    rows = []
    for module, out in zip(model, outputs):
        g = out.grad.double().numpy()
        row = {"mean": g.mean(), "std": g.std()}
        if isinstance(module, nn.Linear):
            dw = module.weight.grad.double().numpy()
            w = module.weight.detach().double().numpy()
            row |= {"weight_std": dw.std(), "weight_min": dw.min(), "weight_max": dw.max(),
                    "weight_data_std": w.std(), "grad_to_data": dw.std() / w.std()}
        rows.append(row)
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), rows


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradient_statistics_match_autograd(act):
    model, x, _ = model_and_batch(act)
    labels = torch.randint(4, (37,), generator=torch.Generator().manual_seed(2))
    loss, reference = autograd_reference(model, x, labels)
    captured = capture(model, x, labels)
    assert captured.loss == pytest.approx(loss, rel=1e-12)
    # every module's output is measured (the identity activation's too)
    expected = list(reference)
    assert len(captured.layers) == len(expected)
    for layer, want in zip(captured.layers, expected):
        assert layer.grad.keys() == want.keys(), layer.name
        for key, value in want.items():
            assert layer.grad[key] == pytest.approx(value, rel=1e-9, abs=1e-15), (layer.name, key)


def test_gradient_pass_keeps_forward_statistics_identical():
    model, x, _ = model_and_batch("tanh")
    labels = torch.zeros(37, dtype=torch.long)
    forward = capture(model, x, grad=False, thresholds=THRESHOLDS)
    both = capture(model, x, labels, thresholds=THRESHOLDS)
    # exactly equal (NaN, a dead count not taken, equal to NaN)
    np.testing.assert_equal([layer.stats for layer in forward.layers],
                            [layer.stats for layer in both.layers])
    assert all(layer.grad is not None for layer in both.layers)


def test_zero_init_weight_gradients_are_exactly_zero():
    model, x, _ = model_and_batch("relu", init="zeros", bias="zeros")
    records = capture(model, x, torch.zeros(37, dtype=torch.long)).layers
    rows = analyse_captured(records, input_std=1.0, thresholds=THRESHOLDS)
    for record in records:
        if record.kind == "weight":
            assert record.grad["weight_min"] == 0.0 == record.grad["weight_max"], record.name
    for row in rows:
        assert row.grad.weight_std == 0.0 and "grad_zero" in row.flags
    for row in signal_rows(rows):
        assert row.grad.std == 0.0  # dL/d(pre) through a zero weight
    assert rows[-1].grad.std > 0  # the logits' gradient is softmax - labels


def test_rows_pair_each_linear_with_the_module_after_it():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(),
                          nn.Sequential(nn.Linear(5, 6), nn.ReLU()), nn.Linear(6, 2)).double()
    records = capture(model, torch.randn(8, 4, dtype=torch.float64), grad=False).layers
    assert [(pre and pre.module_type, post.module_type) for pre, post in pair_rows(records)] == [
        ("Linear", "Tanh"), ("Linear", "ReLU"), (None, "Linear")]


def test_the_head_is_the_last_row_and_not_a_hidden_layer():
    model, x, _ = model_and_batch("relu", init="zeros", bias="zeros")
    rows = analyse_captured(capture(model, x, torch.zeros(37, dtype=torch.long)).layers,
                            input_std=1.0, thresholds=THRESHOLDS)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [13, 9, 11, 4]
    assert len(signal_rows(rows)) == 3 and head_row(rows) is rows[3]
    head = rows[3]
    assert head.kind == "weight" and head.pre is None and head.module == "Linear"
    # zero logits: vanishing everywhere else, but the head is not held to it
    assert head.post.std == 0.0 and "vanishing" not in head.flags
    assert all("vanishing" in row.flags for row in signal_rows(rows))
    assert head.post.dead == 1.0  # a weight layer's own output: units exactly 0 throughout


@pytest.mark.slow
@pytest.mark.parametrize("with_grad", [False, True])
def test_the_engine_keeps_no_activation(with_grad):
    """Hooks reduce and let go: no pre- or post-activation outlives the pass."""
    import gc
    import weakref

    model, x, _ = model_and_batch("relu")
    refs = []
    for module in model:
        module.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out)))
    labels = torch.zeros(37, dtype=torch.long) if with_grad else None
    capture(model, x, labels, grad=with_grad)
    gc.collect()
    assert len(refs) == 7 and all(ref() is None for ref in refs)


def test_counts_are_exact_beyond_float32_integers():
    from actstat.reduce import count_fraction

    ones = torch.ones(1, 2**24 + 3)  # float32 sums of ones stop being exact at 2**24
    assert count_fraction(ones).tolist() == [1.0]
    half = (torch.arange(100_000) % 4 == 0).half()  # 25,000 ones: more than a half can count
    assert count_fraction(half.view(2, -1)).tolist() == [0.25, 0.25]  # a half sum overflows


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_near_zero_and_saturation_match_numpy(dtype):
    model, x, _ = model_and_batch("tanh", init="randn", dtype=dtype)
    records = [r for r in measured(model, x).layers if r.kind == "activation"]
    pairs, _ = plain_forward(model, x)
    assert len(records) == len(pairs) == 3
    for record, (_, post) in zip(records, pairs):
        assert record.stats["near_zero"] == pytest.approx(np.mean(np.abs(post) < NEAR_ZERO))
        assert record.stats["saturated"] == pytest.approx(np.mean(np.abs(post) >= CUT))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_the_c_kernel_and_the_torch_reductions_agree(act, monkeypatch):
    """A float32 CPU pass is reduced by actstat/fused.py's C kernel where it was built, by torch
    elsewhere (CUDA, float64, ACTSTAT_KERNELS=0): every number of every activation, gradients
    and histograms included, agrees to float32 rounding (counts and extremes exactly)."""
    import actstat.fused

    if not actstat.fused.AVAILABLE:
        pytest.skip("actstat._kernels was not built (no C compiler at install)")
    model, x, _ = model_and_batch(act, dtype=torch.float32, widths=(40, 30, 50))
    labels = torch.randint(4, (37,), generator=torch.Generator().manual_seed(2))

    def numbers():
        layers = capture(model, x, labels, thresholds=THRESHOLDS, bins=8).layers
        return [(layer.stats, layer.grad, layer.histogram) for layer in layers]

    monkeypatch.setattr(actstat.fused, "ENABLED", True)
    kernel = numbers()
    monkeypatch.setattr(actstat.fused, "ENABLED", False)
    for got_layer, want_layer in zip(kernel, numbers(), strict=True):
        for got_part, want_part in zip(got_layer, want_layer, strict=True):
            if isinstance(want_part, dict):
                assert got_part.keys() == want_part.keys()
                got_part, want_part = list(got_part.values()), list(want_part.values())
            assert got_part == pytest.approx(want_part, rel=1e-5, abs=1e-7, nan_ok=True), act
