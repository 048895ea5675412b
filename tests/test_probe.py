"""Probe: every statistic against NumPy on the same arrays; hooks scoped; robust reductions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from actstat.activations import ACTIVATIONS, make_activation
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, initialise
from actstat.probe import hidden_blocks, measure, moments
from reference import NUMPY

NEAR_ZERO, CUT = 0.05, 0.97


def model_and_batch(act: str, *, init: str = "kaiming", dtype=torch.float64, widths=(13, 9, 11),
                    params: dict | None = None, bias: str = "normal"):
    activation = make_activation(act, params)
    model = build_mlp(in_features=17, widths=list(widths), num_classes=4, bias=True,
                      activation=activation)
    model = initialise(model, make_init(init), make_bias_init(bias), act_gain=activation.gain,
                       seed=0, device=torch.device("cpu"), dtype=dtype)
    x = torch.randn(37, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x.to(dtype), activation


def numpy_layers(model: nn.Module, x: torch.Tensor, act: str, params: dict | None = None):
    """(pre, post) of every hidden layer, computed in float64 NumPy from the model's weights."""
    fn = NUMPY[act]
    if act == "general_relu":
        p = {"leak": 0.0, "subtract": 0.0, "clamp_max": None, **(params or {})}
        fn = lambda h: np.minimum(np.where(h > 0, h, p["leak"] * h) - p["subtract"],  # noqa: E731
                                  np.inf if p["clamp_max"] is None else p["clamp_max"])
    h = x.double().numpy()
    layers = []
    linears = [m for m in model if isinstance(m, nn.Linear)][:-1]
    for linear in linears:
        pre = h @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()
        h = fn(pre)
        layers.append((pre, h))
    return layers


def expected(pre: np.ndarray, post: np.ndarray, act: str) -> dict[str, float]:
    stats = {}
    for side, a in (("pre", pre), ("post", post)):
        stats |= {f"{side}.mean": a.mean(), f"{side}.std": a.std(), f"{side}.min": a.min(),
                  f"{side}.max": a.max(), f"{side}.near_zero": np.mean(np.abs(a) < NEAR_ZERO)}
    return stats


def got(layer) -> dict[str, float]:
    return {f"{side}.{k}": getattr(layer, side)[k] for side in ("pre", "post")
            for k in ("mean", "std", "min", "max", "near_zero")}


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)],
                         ids=["float64", "float32"])
def test_statistics_match_numpy(act, dtype, rtol):
    model, x, activation = model_and_batch(act, dtype=dtype)
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    reference = numpy_layers(model, x, act)
    assert len(measured) == len(reference) == 3
    for layer, (pre, post) in zip(measured, reference):
        want, have = expected(pre, post, act), got(layer)
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=rtol, abs=rtol), key


def test_dead_units_are_units_zero_for_every_sample():
    # a bias of -1 at lecun scale kills many relu units
    model, x, activation = model_and_batch("relu", init="lecun", bias="normal")
    with torch.no_grad():
        for linear, _ in hidden_blocks(model):
            linear.bias.fill_(-1.0)
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    fractions = [layer.pre["dead"] for layer in measured]
    for fraction, (_, post) in zip(fractions, numpy_layers(model, x, "relu")):
        assert fraction == pytest.approx(np.mean((post == 0).all(axis=0)))
    assert max(fractions) > 0.2


def test_dead_units_of_relu_minus_half_sit_at_minus_half():
    params = {"subtract": 0.5}
    model, x, activation = model_and_batch("general_relu", init="lecun", params=params)
    with torch.no_grad():
        for linear, _ in hidden_blocks(model):
            linear.bias.fill_(-1.0)
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    for layer, (_, post) in zip(measured, numpy_layers(model, x, "general_relu", params)):
        assert layer.pre["dead"] == pytest.approx(np.mean((post == -0.5).all(axis=0)))


@pytest.mark.parametrize("act, params, saturated", [
    ("tanh", {}, lambda post: np.abs(post) >= CUT),
    ("sigmoid", {}, lambda post: (post <= 0.015) | (post >= 0.985)),
    ("general_relu", {"clamp_max": 0.5}, lambda post: post >= 0.5),
])
def test_saturated_fraction_matches_numpy(act, params, saturated):
    model, x, activation = model_and_batch(act, init="randn", params=params)
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    for layer, (_, post) in zip(measured, numpy_layers(model, x, act, params)):
        assert layer.post["saturated"] == pytest.approx(np.mean(saturated(post)))
    assert max(layer.post["saturated"] for layer in measured) > 0.3


def test_symmetric_spread_is_zero_for_constant_weights():
    model, x, activation = model_and_batch("tanh", init="constant", bias="zeros")
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    assert all(layer.pre["spread"] < 1e-12 for layer in measured)
    model, x, activation = model_and_batch("tanh")
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    assert all(layer.pre["spread"] > 0.1 for layer in measured)


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


def test_hooks_are_removed_and_mode_restored_even_on_error():
    model, x, activation = model_and_batch("relu")
    model.train()
    measure(model, x, activation=activation, near_zero=NEAR_ZERO, saturation_cut=CUT)
    measure(model, x, torch.zeros(37, dtype=torch.long), activation=activation,
            near_zero=NEAR_ZERO, saturation_cut=CUT)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        measure(model, x[:, :5], activation=activation, near_zero=NEAR_ZERO, saturation_cut=CUT)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_without_labels_no_autograd_graph_is_built():
    model, x, activation = model_and_batch("relu", dtype=torch.float32)
    seen = []
    model[0].register_forward_hook(
        lambda m, a, out: seen.append((out.requires_grad, out.grad_fn, torch.is_inference(out))))
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO, saturation_cut=CUT)
    assert seen == [(False, None, True)]
    assert measured.loss is None and all(layer.grad is None for layer in measured.layers)
    assert all(p.grad is None for p in model.parameters())


def autograd_reference(model: nn.Module, x: torch.Tensor, labels: torch.Tensor):
    """The same quantities by plain autograd: retain_grad on every hidden pre-activation."""
    model.zero_grad(set_to_none=True)
    pres, h = [], x
    modules = list(model)
    for i, module in enumerate(modules):
        h = module(h)
        if isinstance(module, nn.Linear) and i < len(modules) - 1:
            h.retain_grad()
            pres.append(h)
    loss = nn.functional.cross_entropy(h, labels)
    loss.backward()
    linears = [m for m in modules if isinstance(m, nn.Linear)][:-1]
    rows = []
    for pre, linear in zip(pres, linears):
        g = pre.grad.double().numpy()
        dw = linear.weight.grad.double().numpy()
        w = linear.weight.detach().double().numpy()
        rows.append({"mean": g.mean(), "std": g.std(), "weight_std": dw.std(),
                     "weight_min": dw.min(), "weight_max": dw.max(), "weight_data_std": w.std()})
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), rows


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradient_statistics_match_autograd(act):
    model, x, activation = model_and_batch(act)
    labels = torch.randint(4, (37,), generator=torch.Generator().manual_seed(2))
    loss, reference = autograd_reference(model, x, labels)
    measured = measure(model, x, labels, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT)
    assert measured.loss == pytest.approx(loss, rel=1e-12)
    for layer, want in zip(measured.layers, reference):
        for key, value in want.items():
            assert layer.grad[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def test_gradient_pass_keeps_forward_statistics_identical():
    model, x, activation = model_and_batch("tanh")
    labels = torch.zeros(37, dtype=torch.long)
    forward = measure(model, x, activation=activation, near_zero=NEAR_ZERO, saturation_cut=CUT)
    both = measure(model, x, labels, activation=activation, near_zero=NEAR_ZERO,
                   saturation_cut=CUT)
    assert [layer.pre for layer in forward.layers] == [layer.pre for layer in both.layers]
    assert [layer.post for layer in forward.layers] == [layer.post for layer in both.layers]


def test_zero_init_weight_gradients_are_exactly_zero():
    model, x, activation = model_and_batch("relu", init="zeros", bias="zeros")
    measured = measure(model, x, torch.zeros(37, dtype=torch.long), activation=activation,
                       near_zero=NEAR_ZERO, saturation_cut=CUT)
    for layer in measured.layers:
        assert layer.grad["weight_min"] == 0.0 == layer.grad["weight_max"]
        assert layer.grad["std"] == 0.0


def test_hidden_blocks_pair_each_linear_with_the_module_after_it():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(),
                          nn.Sequential(nn.Linear(5, 6), nn.ReLU()), nn.Linear(6, 2))
    blocks = hidden_blocks(model)
    assert [(type(a).__name__, type(b).__name__) for a, b in blocks] == [
        ("Linear", "Tanh"), ("Linear", "ReLU")]


def test_the_head_is_not_a_hidden_layer():
    model, x, activation = model_and_batch("relu")
    assert len(hidden_blocks(model)) == 3
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [13, 9, 11, 4]


@pytest.mark.slow
@pytest.mark.parametrize("with_grad", [False, True])
def test_the_probe_keeps_no_activation(with_grad):
    """Hooks reduce and let go: no pre- or post-activation outlives the pass."""
    import gc
    import weakref

    model, x, activation = model_and_batch("relu")
    refs = []
    for module in model:
        module.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out)))
    labels = torch.zeros(37, dtype=torch.long) if with_grad else None
    measure(model, x, labels, activation=activation, near_zero=NEAR_ZERO, saturation_cut=CUT)
    gc.collect()
    assert len(refs) == 7 and all(ref() is None for ref in refs)


def test_counts_are_exact_beyond_float32_integers():
    from actstat.probe import count_fraction

    ones = torch.ones(1, 2**24 + 3)  # float32 sums of ones stop being exact at 2**24
    assert count_fraction(ones).tolist() == [1.0]
    half = (torch.arange(100_000) % 4 == 0).half()  # 25,000 ones: more than a half can count
    assert count_fraction(half.view(2, -1)).tolist() == [0.25, 0.25]  # a half sum overflows


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_near_zero_and_saturation_match_numpy(dtype):
    model, x, activation = model_and_batch("tanh", init="randn", dtype=dtype)
    measured = measure(model, x, activation=activation, near_zero=NEAR_ZERO,
                       saturation_cut=CUT).layers
    h = x
    for layer, module in zip(measured, [m for m in model if isinstance(m, nn.Linear)]):
        with torch.no_grad():
            pre = module(h)
            h = torch.tanh(pre)
        post = h.float().numpy()
        assert layer.post["near_zero"] == pytest.approx(np.mean(np.abs(post) < NEAR_ZERO))
        assert layer.post["saturated"] == pytest.approx(np.mean(np.abs(post) >= CUT))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_the_c_kernel_and_the_torch_reductions_agree(act, monkeypatch):
    """A float32 CPU pass is reduced by actstat/fused.py's C kernel where it was built, by torch
    elsewhere (CUDA, float64, ACTSTAT_KERNELS=0): every number of every activation, gradients
    and histograms included, agrees to float32 rounding (counts and extremes exactly)."""
    import actstat.fused

    if not actstat.fused.AVAILABLE:
        pytest.skip("actstat._kernels was not built (no C compiler at install)")
    model, x, activation = model_and_batch(act, dtype=torch.float32, widths=(40, 30, 50))
    labels = torch.randint(4, (37,), generator=torch.Generator().manual_seed(2))

    def numbers():
        layers = measure(model, x, labels, activation=activation, near_zero=NEAR_ZERO,
                         saturation_cut=CUT, bins=8).layers
        return [(layer.pre, layer.post, layer.grad, layer.histogram) for layer in layers]

    kernel = numbers()
    monkeypatch.setattr(actstat.fused, "ENABLED", False)
    for got_layer, want_layer in zip(kernel, numbers(), strict=True):
        for got_part, want_part in zip(got_layer, want_layer, strict=True):
            if isinstance(want_part, dict):
                assert got_part.keys() == want_part.keys()
                got_part, want_part = list(got_part.values()), list(want_part.values())
            assert got_part == pytest.approx(want_part, rel=1e-5, abs=1e-7), act
