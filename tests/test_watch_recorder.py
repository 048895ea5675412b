"""The training recorder (actstat/watch.py's `_Recorder`, a pass of the engine per recorded step)
on tiny models: each row's statistics at step 0 are NumPy's on the mini-batch, its gradient std
autograd's, its histogram the counts over the range fixed at step 0 (values outside it in the
end bins), and the dead units of a feature map its channels; through both reductions (the C
kernel of actstat/fused.py for float32 CPU tensors, and torch's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actstat.activations import make_activation
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, hidden_linears, initialise
from actstat.watch import Schedule, _Recorder, watch

NEAR_ZERO, CUT, BINS = 0.05, 0.97, 8
BATCH = 48


def mlp(act: str, *, bias: float | None = None):
    activation = make_activation(act)
    model = initialise(build_mlp(in_features=12, widths=[16, 10], num_classes=3, bias=True,
                                 activation=activation), make_init("kaiming"),
                       make_bias_init("normal"), act_gain=activation.gain, seed=0,
                       device=torch.device("cpu"), dtype=torch.float32)
    if bias is not None:
        with torch.no_grad():
            for linear in hidden_linears(model):
                linear.bias.fill_(bias)
    g = torch.Generator().manual_seed(3)
    # the pool is one mini-batch: step 0's batch is a permutation of it, and every statistic
    # here is one of the batch as a set
    x = torch.randn(BATCH, 12, generator=g)
    y = torch.randint(3, (BATCH,), generator=g)
    return model, x, y


def by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Per row (each hidden layer, then the head): its post tensor and the gradient at its first
    tensor (the Linear's output), by a plain forward and autograd, as float64 arrays; and the
    loss."""
    outputs, h = [], x
    for module in model:
        h = module(h)
        h.retain_grad()
        outputs.append(h)
    loss = F.cross_entropy(h, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    linears = [k for k, m in enumerate(model) if isinstance(m, nn.Linear)]
    rows = []
    for k in linears:
        post = outputs[k + 1] if k + 1 < len(outputs) else outputs[k]
        rows.append((post.detach().double().numpy(), outputs[k].grad.double().numpy()))
    return rows, float(loss.detach())


def in_range(a: np.ndarray, low: float, high: float) -> list[int]:
    """Counts in BINS equal bins over [low, high], values outside counted in the end bins."""
    counts, _ = np.histogram(np.clip(a, low, high), bins=BINS, range=(low, high))
    return counts.tolist()


def assert_counts(counts, a: np.ndarray, low: float, high: float, what: str = "") -> None:
    """`counts` are `in_range`'s, but that a value within float rounding of a bin edge may be
    in either bin beside it. (Step 0's range widened by half its span on both sides puts the
    step's min and max exactly on bin edges when BINS is a multiple of 4: float32 arithmetic
    decides their bin.)"""
    position = (np.clip(a.ravel(), low, high) - low) / (high - low) * BINS
    edge = np.abs(position - np.round(position)) < 1e-4 * BINS
    sure = in_range(a.ravel()[~edge], low, high)
    spare = np.zeros(BINS, dtype=int)  # the edge values that may land in each bin
    for p in np.round(position[edge]).astype(int):
        spare[max(p - 1, 0)] += 1
        spare[min(p, BINS - 1)] += 1 if 0 < p < BINS else 0
    extra = np.subtract(counts, sure)
    assert sum(counts) == a.size, what
    assert (extra >= 0).all() and (extra <= spare).all(), (what, list(counts), sure)


@pytest.mark.parametrize("act, bias", [("relu", -1.5), ("tanh", None), ("selu", None)])
def test_step_0_rows_are_numpys_statistics_and_autograds_gradients(act, bias, reductions):
    model, x, y = mlp(act, bias=bias)
    rows, loss = by_hand(model, x, y)
    trajectory = watch(model, x, y, Schedule(steps=1, batch_size=BATCH, lr=0.1),
                       F.cross_entropy, labelled=True, near_zero=NEAR_ZERO,
                       saturation_cut=CUT, bins=BINS, numbered=True)
    assert trajectory.steps == (0,)
    assert trajectory.loss[0] == pytest.approx(loss, rel=1e-6)
    assert [layer.name for layer in trajectory.layers] == ["1", "2", "head"]
    # the dead rule: relu's floor 0 (never above it); none for tanh and selu (not counted);
    # the head, a weight layer's own output: exactly 0 throughout
    floors = {"relu": 0.0}
    rules = [floors.get(act)] * 2 + ["zero"]
    for layer, (post, grad), floor in zip(trajectory.layers, rows, rules, strict=True):
        assert layer.mean[0] == pytest.approx(post.mean(), rel=1e-5, abs=1e-7), layer.name
        assert layer.std[0] == pytest.approx(post.std(), rel=1e-5), layer.name
        assert layer.near_zero[0] == pytest.approx(np.mean(np.abs(post) < NEAR_ZERO))
        assert layer.grad_std[0] == pytest.approx(grad.std(), rel=1e-5), layer.name
        if floor is None:  # a known activation with no flat region: not counted
            assert layer.dead is None, layer.name
        else:
            at = post == 0 if floor == "zero" else post <= floor
            assert layer.dead[0] == pytest.approx(np.mean(np.all(at, axis=0))), layer.name
        assert_counts(layer.histogram[0], post, *layer.hist_range, layer.name)
    deads = [layer.dead[0] for layer in trajectory.layers if layer.dead is not None]
    if act == "relu":
        assert max(deads[:2]) > 0  # the setting kills some units: the count is seen


def test_the_histogram_range_is_fixed_at_step_0_as_documented():
    """tanh's own range; relu's from 0 (no negative value at step 0) to its max plus half the
    span; the head's (unbounded both ways) step 0's [min, max] widened by half the span."""
    for act in ("tanh", "relu"):
        model, x, y = mlp(act)
        rows, _ = by_hand(model, x, y)
        trajectory = watch(model, x, y, Schedule(steps=3, batch_size=BATCH, lr=0.5),
                           F.cross_entropy, labelled=True, near_zero=NEAR_ZERO, bins=BINS)
        for layer, (post, _) in zip(trajectory.layers, rows, strict=True):
            lo, hi = float(post.min()), float(post.max())
            span = hi - lo
            if layer is trajectory.layers[-1]:
                want = (lo - span / 2, hi + span / 2)
            else:
                want = (-1.0, 1.0) if act == "tanh" else (0.0, hi + span / 2)
            assert layer.hist_range == pytest.approx(want, rel=1e-5), (act, layer.name)
            # the same range at every step: every value of every step counted
            assert [sum(counts) for counts in layer.histogram] == [post.size] * 3


def test_values_outside_the_fixed_range_count_in_the_end_bins(reductions):
    model, x, y = mlp("tanh")
    rows, _ = by_hand(model, x, y)
    recorder = _Recorder(model, groups=0, near_zero=NEAR_ZERO, saturation_cut=CUT, bins=BINS,
                         labelled=True, numbered=False)
    narrow = (-0.2, 0.3)
    for name in ("1", "3", "4"):  # the rows' post tensors: two Tanh, then the head
        recorder.device_ranges[name, 0] = (torch.tensor(narrow[0], dtype=x.dtype),
                                           torch.tensor(narrow[1], dtype=x.dtype))
        recorder.ranges[name] = {0: narrow}
    with recorder.probe.hooks(x):
        out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    numbers = recorder.numbers(loss.detach().reshape(1), out.detach(), y)
    model.zero_grad(set_to_none=True)
    trajectory = recorder.trajectory(0, [0], numbers, Schedule(steps=1), None, None)
    assert [layer.name for layer in trajectory.layers] == ["0", "2", "4"]
    for layer, (post, _) in zip(trajectory.layers, rows, strict=True):
        assert layer.hist_range == narrow
        counts = list(layer.histogram[0])
        assert counts == in_range(post, *narrow), layer.name  # no value on an edge here
        width = (narrow[1] - narrow[0]) / BINS
        assert counts[0] == np.sum(post < narrow[0] + width) > np.sum(post < narrow[0]) > 0
        assert counts[-1] == np.sum(post >= narrow[1] - width) > np.sum(post > narrow[1]) > 0
        assert sum(counts) == post.size


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


def test_dead_units_of_a_conv_map_are_its_channels(reductions):
    torch.manual_seed(0)
    model = Conv()
    with torch.no_grad():
        model.conv.weight[1] = 0.0
        model.conv.bias[1] = -1.0  # channel 1: 0 at every sample and position
        model.conv.bias[2] = -0.5  # channel 2: 0 at some positions, not at all
    x = torch.randn(BATCH, 2, 6, 6)
    y = torch.randint(5, (BATCH,))
    with torch.no_grad():
        post = model.act(model.conv(x)).double().numpy()
    per_channel = np.moveaxis(post, 1, 0).reshape(3, -1)
    assert (per_channel[2] == 0).any() and not (per_channel[2] == 0).all()
    trajectory = watch(model, x, y, Schedule(steps=1, batch_size=BATCH), F.cross_entropy,
                       labelled=True, near_zero=NEAR_ZERO, bins=0)
    conv = trajectory.layers[0]
    assert conv.name == "conv"
    assert conv.dead[0] == np.mean(np.all(per_channel == 0, axis=1)) == pytest.approx(1 / 3)
    assert conv.mean[0] == pytest.approx(post.mean(), rel=1e-5)


def test_a_stack_records_each_models_own_rows():
    """Two MLPs stacked: each trajectory's step 0 is that model's own, as NumPy computes it."""
    from actstat.model import stack_mlps
    from actstat.watch import watch_stacked

    built = []
    for seed in (0, 1):
        activation = make_activation("relu")
        built.append(initialise(build_mlp(in_features=12, widths=[16, 10], num_classes=3,
                                          bias=True, activation=activation),
                                make_init("kaiming"), make_bias_init("normal"),
                                act_gain=activation.gain, seed=seed, device=torch.device("cpu"),
                                dtype=torch.float32))
    _, x, y = mlp("relu")
    references = [by_hand(model, x, y) for model in built]
    trajectories = watch_stacked(stack_mlps(built), x, y, Schedule(steps=1, batch_size=BATCH),
                                 F.cross_entropy, groups=2, labelled=True, near_zero=NEAR_ZERO,
                                 bins=BINS)
    for trajectory, (rows, loss) in zip(trajectories, references, strict=True):
        assert trajectory.loss[0] == pytest.approx(loss, rel=1e-5)
        for layer, (post, grad) in zip(trajectory.layers, rows, strict=True):
            assert layer.std[0] == pytest.approx(post.std(), rel=1e-4)
            assert layer.grad_std[0] == pytest.approx(grad.std(), rel=1e-4)
            assert sum(layer.histogram[0]) == post.size
    assert not math.isclose(trajectories[0].layers[0].std[0], trajectories[1].layers[0].std[0])
