"""The recorder's cheaper reductions (benchmarks/train.py) give the numbers of the plain ones:
histograms torch.histc's counts, statistics probe.moments' values (the torch reductions
exactly; actstat/fused.py's C kernel, which takes float32 CPU tensors where it was built, to
float rounding), dead units by definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actstat.fused
from actstat.probe import moments
from actstat.watch import Watched, _dead, _Recorder


@pytest.fixture(params=["fused", "torch"])
def reductions(request, monkeypatch):
    """The recorder's two ways of reducing a float32 CPU tensor, as in tests/test_capture.py."""
    if request.param == "fused" and not actstat.fused.AVAILABLE:
        pytest.skip("actstat._kernels was not built (no C compiler at install)")
    monkeypatch.setattr(actstat.fused, "ENABLED", request.param == "fused")
    return request.param


def number(value: torch.Tensor | float) -> torch.Tensor:
    """A recorded number: the torch path's device scalar, or the kernel's host float."""
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def same(got: torch.Tensor, want: torch.Tensor, reductions: str) -> bool:
    """The torch path's number exactly; the kernel's to float rounding (NaN: both NaN)."""
    if want.isnan():
        return bool(got.isnan())
    if reductions == "torch":
        return torch.equal(got, want)
    return got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-12)


def _tensors(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    for k in range(60):
        x = torch.randn(64, 50, generator=g, dtype=torch.float64) * (1 + k % 7)
        if k % 3 == 1:
            x = x.relu()
        x = x.to(dtype)
        if k == 0:
            x[0, 0], x[0, 1], x[1, 0] = float("nan"), float("inf"), float("-inf")
        yield k, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_histograms_are_torch_histc_counts(dtype):
    recorder = _Recorder([Watched("a", nn.ReLU())], groups=0, near_zero=0.01, bins=40,
                         labelled=True)
    for k, x in _tensors(dtype):
        before = x.clone()
        finite = x.float().nan_to_num(0.0, posinf=0.0, neginf=0.0)
        lo, hi = finite.amin(), finite.amax()
        if k % 4 == 0:  # a range narrower than the values: both end bins take the rest
            lo, hi = lo / 2, hi / 2
        recorder.ranges[0] = None
        # one model: a group of one, as the recorder's hooks hand it on
        counts = recorder._histogram(0, x.unsqueeze(0), lo.reshape(1), hi.reshape(1))
        ((low, high),) = recorder.ranges[0]
        edges = torch.linspace(low, high, 41, dtype=torch.float32)
        # values on every bin edge and one float32 step either side of it
        on_edges = torch.cat([edges, edges.nextafter(edges + 1), edges.nextafter(edges - 1)])
        for values in (x, on_edges.to(dtype)):
            counts = recorder._histogram(0, values.unsqueeze(0), lo.reshape(1), hi.reshape(1))[0]
            expected = torch.histc(values.float().clamp(low, high), 40, low, high)
            assert torch.equal(counts, expected.double()), (k, counts, expected)
        assert torch.equal(x.nan_to_num(), before.nan_to_num())  # the activation is untouched


@pytest.mark.parametrize("can_die", [True, False])
def test_layer_statistics_are_the_probes_moments(can_die, reductions):
    recorder = _Recorder([Watched("a", nn.ReLU(), can_die=can_die)], groups=0, near_zero=0.05,
                         bins=0, labelled=True)
    recorder.recording = True
    for _, x in _tensors(torch.float32):
        recorder.on_post(0, x)
        mean, std, near, dead = (number(stat[0]) for stat in recorder.stats[0])
        reference = moments(x, 0.05)
        assert same(mean, reference[0], reductions)
        assert same(std, reference[1], reductions)
        assert same(near, reference[4], reductions)
        if can_die:
            units_dead = [bool((x[:, u] == 0).all()) for u in range(x.shape[1])]
            assert dead.item() == sum(units_dead) / x.shape[1]
        else:
            assert dead.isnan()


def test_dead_units_of_a_conv_map_are_its_channels():
    x = torch.randn(8, 3, 4, 4)
    x[:, 1] = 0.0
    dead, lo, hi = _dead(x.unsqueeze(0))  # a group of one
    assert dead.item() == pytest.approx(1 / 3)
    assert (lo.item(), hi.item()) == (x.min().item(), x.max().item())
    two = torch.stack([x, torch.ones_like(x)])  # per group: the second has no dead channel
    assert _dead(two)[0].tolist() == pytest.approx([1 / 3, 0.0])


def test_the_gradient_std_is_the_probes(reductions):
    recorder = _Recorder([Watched("a", nn.ReLU())], groups=0, near_zero=0.05, bins=0,
                         labelled=True)
    for _, g in _tensors(torch.float32):
        recorder._on_grad(0, g)
        expected = moments(g, 0.0)[1]
        assert same(number(recorder.grads[0][0]), expected, reductions) or expected.isnan()
