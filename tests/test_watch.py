"""actstat train: the statistics through training, checked against a training loop written
here (torch for the steps, NumPy for the statistics), its events, its errors, and its output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from actstat.analysis import analyse_trajectory
from actstat.build import initialised
from actstat.config import Thresholds, load_config
from actstat.records import Run, Trajectory, TrajectoryLayer
from actstat.render_watch import summary_line
from actstat.report import Report
from actstat.training import watch_report
from actstat.watch import Schedule

N, FEATURES, CLASSES = 240, 20, 4
RNG = np.random.default_rng(11)
X = RNG.standard_normal((N, FEATURES))
Y = (X[:, :CLASSES].argmax(axis=1)).astype(np.int64)  # learnable: the largest of 4 features


def _config(tmp_path: Path, *, factory: str | None = None, **extra) -> str:
    np.savez(tmp_path / "xy.npz", images=X, labels=Y)
    model = f"{{factory: '{factory}'}}" if factory else "{depth: 3, width: 32, num_classes: 4}"
    lines = [f"model: {model}",
             "data: {source: xy.npz, normalize: none, batch_size: 100}",
             "dtype: float64", "device: cpu", "seed: 2",
             "init: keep" if factory else "init: kaiming\nactivation: relu",
             "train: {steps: 25, every: 5, batch_size: 16, lr: 0.05}"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "net.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _trajectory(cli, config: str, *args: str) -> dict:
    report = json.loads(cli("train", config, "-q", "-f", "json", *args).stdout)
    return report["runs"][0]["trajectory"]


def _by_hand(config_path: str) -> dict[int, dict]:
    """The same training written out: the model `run` measures, the pool in the order the data
    loads (a permutation of the file's rows seeded with `seed`), the documented mini-batch
    order (a permutation of the pool per epoch from its own generator seeded with `seed`),
    plain SGD; at
    each recorded step each hidden layer's post-activation statistics in NumPy (float64,
    population std) and the gradient at its Linear's output."""
    config = load_config(config_path)
    init, act = config.init[0], config.activation[0]
    model = initialised(config, init, act, torch.device("cpu"), torch.float64, FEATURES)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    x, y = torch.from_numpy(X)[order], torch.from_numpy(Y)[order]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(2)
    rows = torch.empty(0, dtype=torch.long)
    recorded = {}
    for step in range(25):
        if rows.numel() < 16:
            rows = torch.randperm(N, generator=g)
        batch, rows = rows[:16], rows[16:]
        pres, posts = [], []
        h = x[batch]
        linears = [m for m in model if isinstance(m, nn.Linear)]
        for linear in linears[:-1]:
            pre = linear(h)
            pre.retain_grad()
            h = torch.relu(pre)
            pres.append(pre)
            posts.append(h)
        logits = linears[-1](h)
        loss = nn.functional.cross_entropy(logits, y[batch])
        optimiser.zero_grad()
        loss.backward()
        if step % 5 == 0 or step == 24:
            layers = []
            for pre, post in zip(pres, posts):
                p = post.detach().numpy()
                layers.append({"mean": p.mean(), "std": p.std(),
                               "near_zero": np.mean(np.abs(p) < 0.01),
                               "dead": np.mean(np.all(p == 0, axis=0)),
                               "grad_std": pre.grad.numpy().std()})
            accuracy = np.mean(logits.argmax(1).numpy() == y[batch].numpy())
            recorded[step] = {"loss": loss.item(), "layers": layers, "accuracy": accuracy}
        optimiser.step()
    return recorded


def test_the_trajectory_is_that_of_a_training_loop_written_out(cli, tmp_path):
    config = _config(tmp_path)
    t = _trajectory(cli, config)
    want = _by_hand(config)
    assert t["steps"] == sorted(want) == [0, 5, 10, 15, 20, 24]
    for k, step in enumerate(t["steps"]):
        assert t["loss"][k] == pytest.approx(want[step]["loss"], rel=1e-9)
        assert t["accuracy"][k] == pytest.approx(want[step]["accuracy"])
        for layer, expected in zip(t["layers"], want[step]["layers"]):
            for stat, value in expected.items():
                assert layer[stat][k] == pytest.approx(value, rel=1e-9, abs=1e-12), (
                    step, layer["name"], stat)
    assert [layer["name"] for layer in t["layers"]] == ["1", "2", "3", "head"]
    # the head's logits: a module with no known flat region, whose unit is dead when exactly 0
    assert t["layers"][-1]["dead"] == [0.0] * len(t["steps"])
    assert t["stopped"] is None and t["planned_steps"] == 25


def test_the_same_seed_gives_the_same_numbers(cli, tmp_path):
    config = _config(tmp_path)
    assert _trajectory(cli, config) == _trajectory(cli, config)
    assert _trajectory(cli, config) != _trajectory(cli, config, "--seed", "3")


def test_a_learnable_task_trains_and_a_zero_init_does_not(cli, tmp_path):
    config = _config(tmp_path)
    trained = _trajectory(cli, config, "--steps", "150", "--lr", "0.1")
    assert trained["trained"] is True and trained["loss_drop"] > 0.25
    zeros = _trajectory(cli, config, "--steps", "150", "--init", "zeros")
    assert zeros["trained"] is False
    # zeros: every hidden unit is 0 for every sample from step 0 on, and stays so
    first = zeros["events"][0]
    assert (first["kind"], first["step"], first["layer"]) == ("dead", 0, "1")
    assert all(d == 1.0 for d in zeros["layers"][0]["dead"])


def test_a_non_finite_loss_stops_the_run_and_keeps_what_came_before(cli, tmp_path):
    t = _trajectory(cli, _config(tmp_path), "--init", "randn", "--lr", "10", "--steps", "40",
                    "--every", "1")
    assert t["stopped"] == "nonfinite" and t["trained"] is False
    last = t["steps"][-1]
    assert last < 39 and t["loss"][-1] is None
    assert all(loss is not None for loss in t["loss"][:-1])
    assert t["events"][0]["kind"] == "nonfinite_loss" or any(
        e["kind"] == "nonfinite_loss" and e["step"] == last for e in t["events"])


def test_a_non_finite_loss_between_recorded_steps_is_recorded_at_its_step(tmp_path):
    config = load_config(_config(tmp_path), {"init": ["randn"], "train.lr": 10.0,
                                             "train.steps": 40, "train.every": 1000})
    t = watch_report(config).runs[0].trajectory
    assert t.stopped == "nonfinite" and t.steps[0] == 0 and 0 < t.steps[-1] < 39
    assert len(t.steps) == 2 and t.loss[-1] is None


def test_ctrl_c_keeps_the_steps_recorded_and_writes_them(cli, tmp_path, monkeypatch):
    """A KeyboardInterrupt in step 11's forward pass: steps 0, 5 and 10 are kept, written to -o
    (valid, readable), and the command exits 130."""
    calls = {"n": 0}
    original = nn.Linear.forward

    def forward(self, x):
        if self.out_features == 4 and x.shape[0] == 16:  # the head of a training step
            calls["n"] += 1
            if calls["n"] == 12:
                raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(nn.Linear, "forward", forward)
    out = tmp_path / "partial.json"
    result = cli("train", _config(tmp_path), "-q", "-f", "json", "-o", str(out), code=130)
    assert "interrupted" in result.stderr
    report = Report.from_dict(json.loads(out.read_text()))
    t = report.runs[0].trajectory
    assert t.stopped == "interrupted" and t.steps == (0, 5, 10)
    assert (t.stopped_at, t.events[-1].kind, t.events[-1].step) == (11, "interrupted", 11)


def test_residual_norm_and_factory_models_train(cli, tmp_path, monkeypatch):
    t = _trajectory(cli, _config(tmp_path), "--block", "residual", "--norm", "layernorm",
                    "--depth", "2")
    names = [layer["name"] for layer in t["layers"]]
    assert names == ["inp", "blocks.0.norm", "blocks.0.branch.fc1", "blocks.0.branch.fc2",
                     "blocks.0", "blocks.1.norm", "blocks.1.branch.fc1", "blocks.1.branch.fc2",
                     "blocks.1", "head"]
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 4))\n")
    monkeypatch.chdir(tmp_path)
    t = _trajectory(cli, _config(tmp_path, factory="nets.py:small"))
    assert [layer["name"] for layer in t["layers"]] == ["0", "2"]
    assert t["layers"][0]["dead"] is None  # tanh has no flat region: its units cannot die


def test_histograms_count_every_value_at_every_step(cli, tmp_path):
    t = _trajectory(cli, _config(tmp_path), "--hist")
    for layer in t["layers"]:
        assert len(layer["histogram"]) == len(t["steps"])
        # 16 samples × 32 units (the head: × 4 logits) at every step, the outliers in the ends
        units = 4 if layer["name"] == "head" else 32
        assert all(sum(counts) == 16 * units for counts in layer["histogram"])
    relu = t["layers"][0]
    assert relu["hist_range"][0] == 0.0  # relu's values start at 0


def test_the_report_reads_back(cli, tmp_path):
    out = tmp_path / "t.json"
    cli("train", _config(tmp_path), "-q", "--hist", "-f", "json", "-o", str(out))
    text = out.read_text()
    report = Report.from_dict(json.loads(text))
    assert json.loads(report.to_json()) == json.loads(text)
    assert report.runs[0].trajectory.layers[0].histogram is not None


def test_the_terminal_view_says_what_happened(cli, tmp_path):
    text = cli("train", _config(tmp_path), "--hist", "-i", "kaiming,zeros").stdout
    assert "std over steps" in text and "colorful dimension" in text
    assert "2 schemes through training" in text
    assert "zeros + relu: did not train" in text
    assert "layer 1 dead 100.0% from step 0" in text


@pytest.mark.parametrize("width", [80, 100])
def test_the_terminal_view_fits_the_terminal(tmp_path, width):
    from actstat.render import plain_text
    from actstat.render_watch import training_renderables

    config = load_config(_config(tmp_path), {"init": ["kaiming", "zeros"], "hist": True,
                                             "train.steps": 120})
    report = watch_report(config)
    text = plain_text(training_renderables(report, width), width)
    assert max(len(line) for line in text.splitlines()) <= width
    # 120 steps recorded every 5: the sparklines shrink to fit; the std column stays whole
    assert "std start → end" in text and "did not train" in text


@pytest.mark.parametrize("args, message", [
    (["--steps", "-1"], "train.steps"),
    (["--every", "0"], "train.every"),
    (["--lr", "0"], "train.lr"),
    (["--lr", "100"], "train.lr"),
    (["--optimizer", "lbfgs"], "train.optimizer"),
    (["--momentum", "1"], "train.momentum"),
    (["--train-batch", "1000"], "more than the 240 samples"),
    (["-f", "csv"], "train writes table or json"),
])
def test_bad_input_is_one_line(cli, tmp_path, args, message):
    result = cli("train", _config(tmp_path), "-q", *args, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actstat: error:"), result.stderr
    assert message in lines[0]


def test_adam_uses_its_own_defaults(cli, tmp_path):
    t = _trajectory(cli, _config(tmp_path, train={"steps": 10, "every": 5}), "--optimizer",
                    "adam")
    assert (t["optimizer"], t["lr"], t["momentum"]) == ("adam", 0.001, 0.9)


def test_recorded_steps_are_every_kth_and_the_last():
    assert Schedule(steps=25, every=5).recorded() == [0, 5, 10, 15, 20, 24]
    assert Schedule(steps=20, every=5).recorded() == [0, 5, 10, 15, 19]
    assert Schedule(steps=1, every=5).recorded() == [0]
    assert [Schedule(steps=10, lr=1.0, warmup=4).lr_at(s) for s in range(5)] == [
        0.25, 0.5, 0.75, 1.0, 1.0]


def _synthetic(stds: list[float | None], losses: list[float | None],
               dead: list[float] | None = None) -> Trajectory:
    n = len(stds)
    layer = TrajectoryLayer(name="7", mean=(0.0,) * n, std=tuple(stds), near_zero=(0.0,) * n,
                            dead=None if dead is None else tuple(dead), grad_std=(1.0,) * n)
    return Trajectory(steps=tuple(range(0, 20 * n, 20)), loss=tuple(losses), accuracy=None,
                      layers=(layer,), planned_steps=20 * n, every=20, batch_size=8,
                      optimizer="sgd", lr=0.1, momentum=0.0, warmup=0)


def test_a_std_runaway_is_reported_between_the_steps_it_spans():
    t = analyse_trajectory(_synthetic([1.0, 2.0, 0.5, 30.0, 80.0], [2.3] * 5), Thresholds())
    (event,) = t.events
    assert (event.kind, event.layer, event.since, event.step) == ("std_jump", "7", 40, 80)
    assert event.value == pytest.approx(160.0)
    collapse = analyse_trajectory(_synthetic([1.0, 0.5, 1e-3], [2.3] * 3), Thresholds())
    assert (collapse.events[0].since, collapse.events[0].step) == (0, 40)
    assert collapse.events[0].value == pytest.approx(1e-3)
    steady = analyse_trajectory(_synthetic([1.0, 9.0, 50.0, 99.0], [2.3] * 4), Thresholds())
    assert steady.events == ()


def test_trained_compares_the_median_of_the_last_losses_with_step_0():
    losses = [2.0, 1.9, 1.8, 1.6, 1.4, 1.5, 1.4, 1.3]
    t = analyse_trajectory(_synthetic([1.0] * 8, losses), Thresholds())
    assert t.loss_drop == pytest.approx(1 - 1.4 / 2.0)  # median of the last five
    assert t.trained is True
    assert analyse_trajectory(_synthetic([1.0] * 8, losses), Thresholds(trained=0.5)).trained \
        is False
    assert analyse_trajectory(_synthetic([1.0], [2.0]), Thresholds()).trained is None
    dead = analyse_trajectory(_synthetic([1.0] * 3, [2.0] * 3, dead=[0.1, 0.6, 0.9]),
                              Thresholds())
    assert [(e.kind, e.step, e.value) for e in dead.events] == [("dead", 20, 0.6)]
    assert math.isclose(dead.loss_drop, 0.0)


def test_trained_needs_the_loss_below_chance_level():
    """A loss that falls a long way but ends at ln(10) = 2.303 on ten classes (a poor init's
    confident logits unlearned, nothing learned) did not train; just below chance, it did."""
    from dataclasses import replace

    chance = math.log(10)
    at_chance = replace(_synthetic([1.0] * 6, [4.6, 3.0, 2.302, 2.3026, 2.303, 2.302]),
                        chance_loss=chance)
    t = analyse_trajectory(at_chance, Thresholds())
    assert t.loss_drop > 0.25 and t.trained is False
    below = replace(at_chance, loss=(4.6, 3.0, 2.2, 2.1, 2.0, 1.9))
    assert analyse_trajectory(below, Thresholds()).trained is True
    # no chance level (a loss other than a cross-entropy): the fall alone decides, as before
    assert analyse_trajectory(replace(at_chance, chance_loss=None), Thresholds()).trained is True
    line = summary_line(Run("zeros + relu", "zeros", {}, "relu", {}, "healthy", 4.6, (),
                            trajectory=t))
    assert "did not train" in line and "not below chance 2.303" in line, line


def test_lsuv_trains_the_model_it_measured(cli, tmp_path):
    """lsuv scales the model on run's batch before training, as before measuring: step 0 of the
    training (a mini-batch of 16) sees about the stds the measurement (100 samples) saw."""
    report = json.loads(cli("train", _config(tmp_path), "-q", "-f", "json", "-i", "lsuv").stdout)
    (run,) = report["runs"]
    assert [layer["iterations"] > 0 for layer in run["lsuv"]]
    for row, watched in zip(run["layers"], run["trajectory"]["layers"]):
        assert watched["std"][0] == pytest.approx(row["post"]["std"], rel=0.25)


def test_the_training_figure_draws_every_layer_over_steps(cli, tmp_path, monkeypatch):
    """--plot draws the loss of each scheme and each layer's std and dead fraction over the
    recorded steps (the numbers of the report); `actstat plot` redraws it from the JSON."""
    from matplotlib.axes import Axes

    drawn: list[tuple[list, list]] = []
    real_plot = Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((list(args[0]), list(args[1])))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    figure, report_path = tmp_path / "t.png", tmp_path / "t.json"
    result = cli("train", _config(tmp_path), "-f", "json", "-o", str(report_path), "--plot",
                 str(figure), "-i", "kaiming,zeros")
    assert f"wrote {figure} (figure)" in result.stderr
    assert figure.read_bytes().startswith(b"\x89PNG")
    report = Report.from_dict(json.loads(report_path.read_text()))
    steps = list(report.runs[0].trajectory.steps)
    for run in report.runs:
        t = run.trajectory
        nan_free = [[math.nan if v is None or v <= 0 else v for v in series] for series in
                    [t.loss, *(layer.std for layer in t.layers)]]
        for series in nan_free:
            assert any(x == steps and _same(y, series) for x, y in drawn), run.scheme
    redrawn = tmp_path / "again.png"
    cli("plot", str(report_path), "-o", str(redrawn))
    assert redrawn.read_bytes() == figure.read_bytes()


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y))
                                    for x, y in zip(a, b))
