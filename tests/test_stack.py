"""Stacked schemes: K models measured side by side give the numbers of K separate passes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from actstat import plan
from actstat.activations import ACTIVATIONS, make_activation
from actstat.capture import capture, capture_stacked
from actstat.config import Thresholds, load_config
from actstat.inits import INITS, make_bias_init, make_init
from actstat.model import StackedLinear, build_mlp, initialise, stack_mlps
from actstat.pipeline import profile, stacks
from actstat.reduce import HIST_BINS, count_fraction, group_histogram, group_moments
from actstat.report import Report

NEAR_ZERO, CUT = 0.05, 0.97
THRESHOLDS = Thresholds(near_zero=NEAR_ZERO, saturation_cut=CUT)
BATCH, FEATURES = 64, 20
COUNTS = ("near_zero", "dead", "saturated")


def models(act: str, inits: list[str], *, dtype=torch.float64, bias: str = "normal",
           widths=(24, 16, 24, 16)):
    activation = make_activation(act)
    built = []
    for seed, init in enumerate(inits):
        model = build_mlp(in_features=FEATURES, widths=list(widths), num_classes=5, bias=True,
                          activation=activation)
        built.append(initialise(model, make_init(init), make_bias_init(bias),
                                act_gain=activation.gain, seed=seed, device=torch.device("cpu"),
                                dtype=dtype))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BATCH, FEATURES, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(5, (BATCH,), generator=g)
    return built, x, labels, activation


def assert_same_layers(stacked, alone, *, rel: float, count_atol: float):
    """Every number of every record equal to float tolerance; fractions may differ by a value
    or two that sits on a threshold, histogram cells by a value on a bin edge."""
    if alone.loss is None:
        assert stacked.loss is None
    else:
        assert stacked.loss == pytest.approx(alone.loss, rel=rel, abs=1e-12)
    for a, b in zip(stacked.layers, alone.layers, strict=True):
        assert (a.name, a.kind, a.shape, a.unit_dim, a.weight_shape, a.consumes) == (
            b.name, b.kind, b.shape, b.unit_dim, b.weight_shape, b.consumes)
        assert a.module_type == ("StackedLinear" if b.kind == "weight" else b.module_type)
        for side in ("stats", "grad"):
            values_a, values_b = getattr(a, side), getattr(b, side)
            if values_b is None:
                assert values_a is None, (a.name, side)
                continue
            assert values_a.keys() == values_b.keys()
            for key, want in values_b.items():
                if want is None or math.isnan(want):
                    assert values_a[key] is None or math.isnan(values_a[key]), (a.name, key)
                    continue
                tol = count_atol if key in COUNTS else 0.0
                assert values_a[key] == pytest.approx(want, rel=rel, abs=tol + 1e-12), \
                    (a.name, side, key)
        if b.histogram is None:
            assert a.histogram is None
        else:
            assert sum(a.histogram) == sum(b.histogram) == math.prod(b.shape)
            assert np.abs(np.subtract(a.histogram, b.histogram)).max() <= 2


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("with_grad", [False, True])
def test_stacked_equals_separate_for_every_activation(act, with_grad):
    inits = ["kaiming", "lecun", "default", "randn"]
    built, x, labels, activation = models(act, inits)
    options = {"grad": with_grad, "bins": HIST_BINS, "thresholds": THRESHOLDS}
    labels = labels if with_grad else None
    together = capture_stacked(stack_mlps(built), x, labels, groups=len(inits), **options)
    assert len(together) == len(inits)
    for model, stacked in zip(built, together, strict=True):
        alone = capture(model, x, labels, **options)
        assert len(alone.layers) == 8 + 1  # a Linear and its activation per layer, the head
        assert_same_layers(stacked, alone, rel=1e-9, count_atol=2 / (BATCH * 24))


@pytest.mark.slow
@pytest.mark.parametrize("init", INITS)
def test_stacked_equals_separate_for_every_init_in_float32(init):
    """float32: a batched matmul sums in its own order, so numbers agree to float rounding.
    Symmetric inits (zeros, constant) keep their exactly-zero spread and gradients."""
    built, x, labels, activation = models("tanh", [init, "kaiming", init], dtype=torch.float32)
    together = capture_stacked(stack_mlps(built), x, labels, groups=3, thresholds=THRESHOLDS)
    for model, stacked in zip(built, together, strict=True):
        alone = capture(model, x, labels, thresholds=THRESHOLDS)
        assert_same_layers(stacked, alone, rel=1e-4, count_atol=2 / (BATCH * 24))
        for a, b in zip(stacked.layers, alone.layers):
            if b.stats.get("spread") == 0:
                assert a.stats["spread"] == 0
            if b.grad.get("weight_std") == 0:
                assert a.grad["weight_std"] == 0


@pytest.mark.slow
def test_stacked_leaves_each_scheme_its_own_gradients():
    """The backward of the summed loss gives each stacked weight the gradient of its own
    model's loss, as a plain backward of that model alone does (seen by a hook on the weight:
    the capture puts the user's .grad back as it was)."""
    built, x, labels, _ = models("relu", ["kaiming", "xavier"])
    stacked = stack_mlps(built)
    first = [m for m in stacked if isinstance(m, StackedLinear)][0]
    seen = []
    first.weight.register_hook(lambda g: seen.append(g.detach().clone()))
    capture_stacked(stacked, x, labels, groups=2, thresholds=THRESHOLDS)
    assert len(seen) == 1 and first.weight.grad is None
    for k, model in enumerate(built):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        torch.testing.assert_close(seen[0][k], model[0].weight.grad, rtol=1e-9, atol=1e-12)


def test_stacked_linear_matches_each_linear():
    built, x, _, _ = models("relu", ["kaiming", "lecun", "uniform"])
    first, second = (StackedLinear(torch.stack([m[i].weight.detach() for m in built]),
                                   torch.stack([m[i].bias.detach() for m in built]))
                     for i in (0, 2))
    shared = first(x)  # (batch, in) shared by all: one matmul
    assert shared.shape == (3, BATCH, 24) and shared.is_contiguous()
    hidden = torch.relu(shared)
    own = second(hidden)  # (K, batch, in): one batched matmul
    for k, model in enumerate(built):
        torch.testing.assert_close(shared[k], F.linear(x, model[0].weight, model[0].bias))
        torch.testing.assert_close(own[k], F.linear(hidden[k], model[2].weight, model[2].bias))
    no_bias = StackedLinear(first.weight.detach(), None)
    torch.testing.assert_close(no_bias(hidden[:, :, :20]),
                               torch.bmm(hidden[:, :, :20], first.weight.transpose(1, 2)))


def test_group_moments_are_each_groups_own():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 50, 30, generator=g, dtype=torch.float64)
    x[1] *= 1e3
    x[2] = 0.25  # constant: std 0
    x[3] = x[3].abs() + 7  # mean far from 0
    mean, std, lo, hi, near = (v.tolist() for v in group_moments(x, 0.1))
    for k in range(4):
        a = x[k].numpy()
        assert (mean[k], std[k], lo[k], hi[k], near[k]) == pytest.approx(
            (a.mean(), a.std(), a.min(), a.max(), np.mean(np.abs(a) < 0.1)), rel=1e-12,
            abs=1e-15)
    mask = (x > 0).double()
    assert count_fraction(mask).tolist() == pytest.approx([float((x[k] > 0).double().mean())
                                                           for k in range(4)])


def test_group_histogram_is_each_groups_own():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 25, generator=g)
    x[1] = x[1] * 10 + 3
    x[2] = 1.5  # constant: all in the first bin
    lo, hi = x.reshape(3, -1).amin(1), x.reshape(3, -1).amax(1)
    counts = group_histogram(x, lo, hi, HIST_BINS)
    for k in range(2):
        want, _ = np.histogram(x[k].numpy(), bins=HIST_BINS, range=(float(lo[k]), float(hi[k])))
        assert counts[k].tolist() == want.tolist()
    assert counts[2, 0] == 1000 and counts[2, 1:].sum() == 0


def test_mean_and_std_are_accurate_where_blas_dot_is_not():
    """Many equal values (MNIST's background pixels): float32 BLAS dot drifts by ~1e-4 over
    784,000 values; the cascade sum that the probe uses stays at float32 rounding."""
    g = torch.Generator().manual_seed(5)
    x = torch.full((1000, 784), -0.4242, dtype=torch.float32)
    mask = torch.rand(1000, 784, generator=g) < 0.2
    x[mask] = torch.rand(int(mask.sum()), generator=g) * 2.8
    a = x.double().numpy()
    mean, std, *_ = (float(v[0]) for v in group_moments(x.unsqueeze(0), 0.0))
    assert mean == pytest.approx(a.mean(), rel=1e-6)
    assert std == pytest.approx(a.std(), rel=1e-6)


def test_stacks_group_by_activation_in_order_and_size():
    config = load_config(None, {
        "init": ["kaiming", "lecun", "xavier"], "activation": ["relu", "tanh"],
        "compare": [{"init": "randn", "activation": {"name": "leaky_relu",
                                                     "negative_slope": 0.2}},
                    {"init": "zeros", "activation": "leaky_relu"},
                    {"init": "default", "activation": "relu"}]})
    todo = plan.schemes(config)
    assert [act.name for _, act in todo] == ["relu", "tanh"] * 3 + ["leaky_relu"] * 2 + ["relu"]
    assert stacks(todo, 16) == [[0, 2, 4, 8], [1, 3, 5], [6], [7]]  # parameters differ: 6, 7
    assert stacks(todo, 2) == [[0, 2], [4, 8], [1, 3], [5], [6], [7]]
    assert stacks(todo, 1) == [[i] for i in [0, 2, 4, 8, 1, 3, 5, 6, 7]]


def test_stack_size_follows_free_memory_and_training(monkeypatch):
    config = load_config(None, {"model.depth": 4, "model.width": 64, "data.batch_size": 100,
                                "device": "cpu"})
    cpu = torch.device("cpu")
    needed = plan.memory_needed(config, 784, 4)
    per_scheme = needed["activations"] + 2 * needed["weights"]
    monkeypatch.setattr(plan, "available_memory", lambda device: 2 * 3 * per_scheme)
    assert plan.stack_size(config, 784, cpu, torch.float32) == 3
    monkeypatch.setattr(plan, "available_memory", lambda device: 10**15)
    assert plan.stack_size(config, 784, cpu, torch.float32) == plan.MAX_STACK
    monkeypatch.setattr(plan, "available_memory", lambda device: None)
    assert plan.stack_size(config, 784, cpu, torch.float32) == 1
    training = load_config(None, {"train.steps": 2, "device": "cpu"})
    assert plan.stack_size(training, 784, cpu, torch.float32) == 1


def _close(a, b, rel: float, count_atol: float, key: str = "") -> None:
    """Two report dicts equal to float tolerance (counts and fractions by a value or two)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for name in a:
            _close(a[name], b[name], rel, count_atol, name)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v, rel, count_atol, key)
    elif isinstance(a, float) and isinstance(b, float):
        tol = count_atol if key in ("near_zero", "dead", "saturated") else 0.0
        assert a == pytest.approx(b, rel=rel, abs=tol + 1e-30) or (math.isnan(a) and math.isnan(b)), key
    else:
        assert a == b, key


@pytest.mark.slow
@pytest.mark.parametrize("grad", [True, False])
def test_compare_report_is_the_same_stacked_or_not(grad):
    """The whole report of a 3 x 3 grid (MNIST, float32, with theory and histograms) is the
    same measured stacked as measured one scheme at a time: verdicts, flags and every number."""
    config = load_config(None, {
        "init": ["kaiming", "default", "zeros"], "activation": ["relu", "tanh", "selu"],
        "model.depth": 6, "model.width": 48, "data.batch_size": 200, "device": "cpu",
        "grad": grad, "hist": True})
    stacked = profile(config).to_dict()
    alone = profile(config, stack=1).to_dict()
    assert [r["scheme"] for r in stacked["runs"]] == [r["scheme"] for r in alone["runs"]]
    assert [r["verdict"] for r in stacked["runs"]] == [r["verdict"] for r in alone["runs"]]
    for a, b in zip(stacked["runs"], alone["runs"]):
        for la, lb in zip(a["layers"], b["layers"]):
            assert la["flags"] == lb["flags"]
            if "histogram" in (la.get("post") or {}):
                la["post"].pop("histogram"), lb["post"].pop("histogram")
    _close(stacked, alone, rel=1e-4, count_atol=2 / (200 * 48))


def test_progress_reports_every_scheme_once_in_stacked_runs():
    config = load_config(None, {"init": ["kaiming", "lecun"], "activation": ["relu", "tanh"],
                                "model.depth": 2, "model.width": 8, "data.batch_size": 32,
                                "device": "cpu"})
    seen = []
    report = profile(config, lambda done, total, label: seen.append((done, total, label)))
    assert [done for done, _, _ in seen] == [1, 2, 3, 4]
    assert {total for _, total, _ in seen} == {4}
    assert sorted(label for _, _, label in seen) == sorted(run.scheme for run in report.runs)


@pytest.mark.slow
def test_stacked_report_keeps_the_config_order():
    config = load_config(None, {"init": ["kaiming", "lecun"], "activation": ["relu", "tanh"],
                                "model.depth": 2, "model.width": 8, "device": "cpu"})
    assert [run.scheme for run in profile(config).runs] == [
        "kaiming + relu", "kaiming + tanh", "lecun + relu", "lecun + tanh"]


def test_histogram_rows_survive_the_report_round_trip():
    config = load_config(None, {"init": ["kaiming", "lecun"], "model.depth": 2,
                                "model.width": 8, "device": "cpu", "hist": True})
    report = profile(config)
    for run in report.runs:
        # two hidden layers of 8 units, then the head's 10 logits: every value counted
        assert [layer.fan_out for layer in run.layers] == [8, 8, 10]
        for layer in run.layers:
            assert len(layer.post.histogram) == HIST_BINS
            assert sum(layer.post.histogram) == config.data.batch_size * layer.fan_out
    raw = json.loads(json.dumps(report.to_dict()))
    assert [layer["post"]["histogram"] for layer in raw["runs"][0]["layers"]] == [
        list(layer.post.histogram) for layer in report.runs[0].layers]
    assert Report.from_dict(raw) == report  # histograms come back as the tuples they were
