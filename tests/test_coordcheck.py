"""actstat coord-check: the reference figures of Tensor Programs V's MLP (SP and μP), the slopes
against NumPy, determinism, the executor, the Python API and the command's exit codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import actstat
from actstat.config import load_config
from actstat.coordcheck import coord_check_report, slope
from actstat.report import Report, read_report

# the reference figures' MLP (784 -> w -> w -> 10, relu, kaiming, Adam lr 1e-2, batch 256,
# the bundled MNIST sample), at widths small enough for the fast suite
FAST = {"device": "cpu", "coord_check.widths": [64, 128, 256, 512], "coord_check.steps": 2,
        "coord_check.seeds": 2}


def checked(param: str, **more) -> Report:
    overrides = {**FAST, "coord_check.param": param, **more}
    return coord_check_report(load_config(None, overrides, defaults={"model.depth": 2}))


@pytest.fixture(scope="module")
def sp() -> Report:
    return checked("sp")


@pytest.fixture(scope="module")
def mup() -> Report:
    return checked("mup")


def layer(report: Report, name: str):
    return next(layer for layer in report.coord_check.layers if layer.name == name)


@pytest.mark.slow
def test_sp_logits_grow_with_width_after_an_adam_step(sp):
    """SP + Adam: the logits' mean |x| grows about in proportion to the width once trained
    (the reference: ≈ 1.1), while at init it does not depend on the width."""
    head = layer(sp, "head")
    assert head.slope[1] > 0.7 and head.slope[2] > 0.7, head.slope
    assert abs(head.slope[0]) < 0.2, head.slope
    assert "grows_with_width" in head.flags and head.first_step == 1
    assert sp.coord_check.verdict == "grows_with_width"


@pytest.mark.slow
def test_mup_keeps_every_layer_within_a_fifth_of_flat(mup):
    """μP (hidden lr × base/width, readout × base/width, zero readout): every slope of every
    layer at every step within ±0.2; the zero readout's logits at init have no slope."""
    check = mup.coord_check
    assert check.verdict == "width-stable"
    for row in check.layers:
        for step, value in zip(check.steps, row.slope):
            if row.name == "head" and step == 0:
                assert value is None  # exactly 0 at every width
                continue
            assert value is not None and abs(value) < 0.2, (row.name, step, value)
    assert check.base_width == 64 and check.param == "mup"


@pytest.mark.slow
def test_reference_figures_at_the_default_widths():
    """The issue's figures at the command's defaults: widths 64 … 1024, 3 seeds, 4 updates
    (docs/coord-check.md gives 64 … 2048, which reads the same and takes 4 times as long). SP's
    logits grow faster than width^0.7 over the first three updates; μP keeps every slope within
    ±0.2."""
    full = {"coord_check.widths": [64, 128, 256, 512, 1024], "coord_check.steps": 4,
            "coord_check.seeds": 3}
    sp = checked("sp", **full).coord_check
    head = next(row for row in sp.layers if row.name == "head")
    assert all(value > 0.7 for value in head.slope[1:4]), head.slope
    mu = checked("mup", **full).coord_check
    assert all(abs(value) < 0.2 for row in mu.layers for value in row.slope
               if value is not None)


@pytest.mark.slow
def test_slopes_are_numpys_least_squares_over_each_seed(sp):
    """Each layer's slope is the mean of the seeds' least-squares slopes of ln size against
    ln width (np.polyfit), its spread their population std."""
    check = sp.coord_check
    x = np.log(check.widths)
    for row in check.layers:
        for i, _ in enumerate(check.steps):
            per_seed = [np.polyfit(x, np.log([row.sizes[w][i][k] for w in range(len(x))]), 1)[0]
                        for k in range(len(check.seeds))]
            assert row.slope[i] == pytest.approx(np.mean(per_seed), rel=1e-9, abs=1e-12)
            assert row.spread[i] == pytest.approx(np.std(per_seed), rel=1e-9, abs=1e-12)


def test_slope_is_undefined_where_a_size_is_zero_or_missing():
    assert slope([64, 128, 256], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert slope([64, 128, 256], [3.0, 3.0, 3.0]) == pytest.approx(0.0)
    assert slope([64, 128, 256], [0.0, 1.0, 2.0]) is None
    assert slope([64, 128, 256], [1.0, None, 2.0]) is None


@pytest.mark.slow
def test_sizes_are_the_engines_mean_abs_of_the_post_activation():
    """Step 0's size of a hidden layer is NumPy's mean |relu(W x + b)| on that step's
    mini-batch, for the copy built with that seed (the same weights `run` builds)."""
    from actstat.build import initialised
    from actstat.data import load_pool
    from actstat.watch import _Order

    config = load_config(None, {**FAST, "coord_check.seeds": 1, "coord_check.steps": 0},
                         defaults={"model.depth": 2})
    report = coord_check_report(config)
    pool = load_pool(config.data, seed=0, device=torch.device("cpu"), dtype=torch.float32,
                     num_classes=10)
    rows = _Order(pool.inputs.shape[0], 256, 0).next()
    x = pool.inputs[rows].double().numpy()
    for w, width in enumerate(report.coord_check.widths):
        at = config.model_copy(update={"model": config.model.model_copy(update={"width": width})})
        model = initialised(at, config.init[0], config.activation[0], torch.device("cpu"),
                            torch.float64, 784)
        first = model[0]
        h = np.maximum(x @ first.weight.detach().numpy().T + first.bias.detach().numpy(), 0)
        got = report.coord_check.layers[0].sizes[w][0][0]
        assert got == pytest.approx(np.abs(h).mean(), rel=1e-5)


@pytest.mark.slow
def test_the_same_seeds_give_the_same_report(sp):
    again = checked("sp").to_dict()
    first = sp.to_dict()
    assert again["coord_check"] == first["coord_check"]


@pytest.mark.slow
def test_the_report_round_trips_through_json(sp, tmp_path):
    path = sp.save(tmp_path / "coord.json")
    back = read_report(path)
    assert back.coord_check == sp.coord_check
    assert back.runs == ()
    raw = json.loads(path.read_text())
    assert raw["coord_check"]["layers"][2]["name"] == "head"
    assert len(raw["coord_check"]["layers"][2]["sizes"]) == 4  # widths
    assert "coord_check" not in json.loads(actstat.Report.to_json(
        actstat.profile(nn.Linear(3, 2), torch.randn(4, 3))))


class Recording:
    """An executor that runs each task here, as a distributed one would elsewhere, and keeps
    the tasks it was handed."""

    def __init__(self):
        self.tasks = []

    def map(self, run, tasks):
        self.tasks = list(tasks)
        return [run(task) for task in tasks]


@pytest.mark.slow
def test_an_executor_gets_one_task_per_width_and_gives_the_same_numbers(mup):
    executor = Recording()
    config = load_config(None, {**FAST, "coord_check.param": "mup"}, defaults={"model.depth": 2})
    report = coord_check_report(config, executor=executor)
    assert executor.tasks == [64, 128, 256, 512]
    assert report.coord_check == mup.coord_check


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"model.block": "residual", "model.depth": 1},
                                   {"model.norm": "layernorm"}])
def test_residual_and_normed_models_train_one_copy_at_a_time(model):
    """The residual and normed MLPs' seeds are not stacked; μP finds their readout and their
    norms' gains (vector-like) as it finds the plain MLP's."""
    report = checked("mup", **model, **{"coord_check.widths": [32, 64, 128],
                                       "coord_check.steps": 1})
    check = report.coord_check
    assert check.layers[-1].name == "head"
    assert check.layers[-1].slope[0] is None  # the zero readout
    assert all(abs(v) < 0.3 for row in check.layers for v in row.slope if v is not None)


def mlp_factory(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 5))


@pytest.mark.slow
def test_the_python_api_checks_any_factory_with_its_optimiser():
    g = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(512, 20, generator=g), torch.randint(5, (512,), generator=g)
    made = []

    def optimiser(model, lr):
        made.append(lr)
        return torch.optim.SGD(model.parameters(), lr=lr)

    report = actstat.coord_check(mlp_factory, [32, 64, 128], inputs, targets, steps=2, seeds=2,
                                 lr=0.05, batch_size=128, optimiser=optimiser)
    check = report.coord_check
    assert made == [0.05] * 6  # one optimiser per width and seed
    assert check.param == "own" and check.optimizer == "adam"  # recorded as asked
    assert [row.name for row in check.layers] == ["0", "2", "4"]
    assert len(check.layers[0].sizes) == 3 and len(check.layers[0].sizes[0]) == 3
    assert report.config["source"] == "actstat.coord_check"
    assert "slope of ln mean|x|" in str(report)


@pytest.mark.slow
def test_a_factory_the_width_breaks_is_named_with_its_width():
    def fussy(width):
        if width > 64:
            raise ValueError("too wide for me")
        return mlp_factory(width)

    with pytest.raises(actstat.coordcheck.CoordCheckError, match="width 128: .*too wide"):
        actstat.coord_check(fussy, [32, 64, 128], torch.randn(64, 20), batch_size=32)


@pytest.mark.slow
def test_a_model_with_mup_base_shapes_trains_with_the_mup_packages_optimiser():
    """A factory's model μP'd by the mup package (MuReadout, set_base_shapes): the run uses
    mup.MuAdam, and its logits stay width-stable as the built-in μP's do."""
    mup = pytest.importorskip("mup")

    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, width), nn.Linear(width, width)
            self.readout = mup.MuReadout(width, 10, readout_zero_init=True)

        def forward(self, x):
            return self.readout(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def factory(width):
        model = Net(width)
        mup.set_base_shapes(model, Net(64), delta=Net(128))
        return model

    from actstat.data import load_pool

    config = load_config(None, {"device": "cpu"})
    pool = load_pool(config.data, seed=0, device=torch.device("cpu"), dtype=torch.float32,
                     num_classes=10)
    report = actstat.coord_check(factory, [64, 128, 256, 512], pool.inputs, pool.labels,
                                 steps=2, seeds=2)
    logits = report.coord_check.layers[-1]
    assert all(abs(v) < 0.2 for v in logits.slope[1:]), logits.slope
    plain = actstat.coord_check(
        lambda w: nn.Sequential(nn.Linear(784, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                                nn.Linear(w, 10)),
        [64, 128, 256, 512], pool.inputs, pool.labels, steps=2, seeds=2)
    assert plain.coord_check.layers[-1].slope[1] > 0.7  # no base shapes: torch's Adam, SP


def test_fewer_than_three_widths_is_refused():
    from actstat.errors import ConfigError

    with pytest.raises(ConfigError, match="at least three different widths"):
        load_config(None, {"coord_check.widths": [64, 128]})
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(None, {"coord_check.widths": [64, 128, 128, 256]})


def test_the_widths_are_sorted():
    assert load_config(None, {"coord_check.widths": [256, 64, 128]}).coord_check.widths == [
        64, 128, 256]


@pytest.mark.slow
def test_a_diverging_run_is_an_event_with_its_width_seed_and_step():
    report = checked("sp", **{"coord_check.optimizer": "sgd", "coord_check.lr": 10.0,
                              "coord_check.steps": 8, "coord_check.widths": [64, 128, 512]})
    events = report.coord_check.events
    assert events and events[0].kind == "nonfinite_loss"
    assert events[0].layer.startswith("width ") and ", seed " in events[0].layer
    assert math.isfinite(report.coord_check.layers[0].sizes[0][0][0])  # the rest kept


@pytest.mark.slow
def test_ray_runs_each_width_as_a_task_with_the_same_numbers():
    """A local Ray instance (the optional actstat[ray] extra; skipped without it): one task per
    width, the numbers of the in-process run."""
    pytest.importorskip("ray")
    from actstat.executors import RayExecutor

    config = load_config(None, {**FAST, "coord_check.widths": [32, 64, 128]},
                         defaults={"model.depth": 2})
    here = coord_check_report(config)
    there = coord_check_report(config, executor=RayExecutor(num_cpus=0.5))
    assert there.coord_check == here.coord_check
