"""actstat train with several schemes: schemes of the plain MLP that share an activation train
side by side as one stacked model, and every number of every trajectory is the one that
training each scheme on its own gives; a scheme that diverges stops alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actstat import pipeline, plan, training
from actstat.config import load_config
from actstat.plan import train_stack_size
from actstat.records import Trajectory
from actstat.training import watch_report
from actstat.watch import watch_stacked

N, FEATURES, CLASSES = 240, 20, 4
RNG = np.random.default_rng(5)
X = RNG.standard_normal((N, FEATURES))
Y = (X[:, :CLASSES].argmax(axis=1)).astype(np.int64)


def _config(tmp_path: Path, **overrides) -> object:
    np.savez(tmp_path / "xy.npz", images=X, labels=Y)
    lines = ["model: {depth: 3, width: 32, num_classes: 4}",
             "data: {source: xy.npz, normalize: none, batch_size: 100}",
             "dtype: float64", "device: cpu", "seed: 4",
             "init: [kaiming, lecun, xavier, zeros]", "activation: relu",
             "train: {steps: 30, every: 3, batch_size: 16, lr: 0.05}", "hist: true"]
    path = tmp_path / "net.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(str(path), overrides)


def _numbers(t: Trajectory) -> dict:
    """Every number a trajectory holds, by name (events and verdict come from these)."""
    out = {"steps": t.steps, "loss": t.loss, "accuracy": t.accuracy, "stopped": t.stopped,
           "stopped_at": t.stopped_at, "events": [(e.kind, e.step, e.layer) for e in t.events],
           "trained": t.trained}
    for layer in t.layers:
        for stat in ("mean", "std", "near_zero", "dead", "grad_std", "hist_range", "histogram"):
            out[layer.name, stat] = getattr(layer, stat)
    return out


def _same(stacked: dict, alone: dict, scheme: str) -> None:
    """Equal, numbers to 1e-9 (a batched matmul sums in its own order); None (a non-finite
    value) where the other has None."""
    assert stacked.keys() == alone.keys()
    for key, want in alone.items():
        got = stacked[key]
        if key[-1:] == ("histogram",) and want is not None:
            for g, w in zip(got, want, strict=True):
                assert _edge_values_moved(g, w), (scheme, key)
            continue
        if not (isinstance(want, tuple) and any(isinstance(v, float) for v in want)):
            assert got == want, (scheme, key)
            continue
        assert len(got) == len(want), (scheme, key)
        for i, (g, w) in enumerate(zip(got, want)):
            if w is None:
                assert g is None, (scheme, key, i)
            else:
                assert g == pytest.approx(w, rel=1e-9, abs=1e-12), (scheme, key, i)


def _edge_values_moved(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Equal counts, or at most two values each moved to a neighbouring bin: step 0's extremes
    fix the range, and so sit exactly on bin edges (its min and max a quarter of the range in
    from each end, where the range is widened), where a batched matmul's last bit can put them
    on either side."""
    diff = [g - w for g, w in zip(got, want, strict=True)]
    moved = 0
    i = 0
    while i < len(diff):
        if diff[i] == 0:
            i += 1
            continue
        if i + 1 == len(diff) or abs(diff[i]) != 1 or diff[i + 1] != -diff[i]:
            return False
        moved += 1
        i += 2
    return moved <= 2


def _trained(config, monkeypatch, stack: int) -> tuple[list, list[int]]:
    """watch_report's runs, and how many schemes each stacked training held (the list goes on
    counting until the test ends)."""
    sizes: list[int] = []
    original = watch_stacked

    def counted(model, *args, **kwargs):
        trajectories = original(model, *args, **kwargs)
        sizes.append(len(trajectories))
        return trajectories

    monkeypatch.setattr(training, "watch_stacked", counted)
    return list(watch_report(config, stack=stack).runs), sizes


def test_stacked_training_gives_the_numbers_of_separate_runs(tmp_path, monkeypatch):
    config = _config(tmp_path)
    stacked, sizes = _trained(config, monkeypatch, stack=4)
    alone, none = _trained(config, monkeypatch, stack=1)
    assert sizes == [4] and none == []
    assert [r.scheme for r in stacked] == [r.scheme for r in alone]
    for s, a in zip(stacked, alone):
        assert [layer.name for layer in s.trajectory.layers] == ["1", "2", "3", "head"]
        _same(_numbers(s.trajectory), _numbers(a.trajectory), s.scheme)
        # the measurement at init is the same too (profile stacks it as before)
        assert s.layers == a.layers
    # they are four different trainings: kaiming learns, zeros stays dead
    kaiming, zeros = stacked[0].trajectory, stacked[3].trajectory
    assert kaiming.loss[-1] < kaiming.loss[0] and kaiming.loss != stacked[1].trajectory.loss
    assert all(d == 1.0 for d in zeros.layers[0].dead)


def test_a_diverging_scheme_stops_alone_and_the_others_train_on(tmp_path, monkeypatch):
    """normal(std=30) (a loss of 2e8 at step 0) goes non-finite within a few steps, between
    recorded steps; kaiming and lecun beside it keep the numbers they have alone, to the last
    step (the NaNs stay in its own slice of every tensor)."""
    wild = {"name": "normal", "params": {"std": 30}}
    config = _config(tmp_path, **{"init": ["kaiming", wild, "lecun"], "train.lr": 0.1,
                                  "train.momentum": 0.9, "train.every": 7})
    stacked, sizes = _trained(config, monkeypatch, stack=3)
    alone, _ = _trained(config, monkeypatch, stack=1)
    assert sizes == [3]
    wild_alone = alone[1].trajectory
    assert wild_alone.stopped == "nonfinite" and wild_alone.stopped_at % 7 != 0
    assert wild_alone.steps[-1] == wild_alone.stopped_at and wild_alone.loss[-1] is None
    for s, a in zip(stacked, alone):
        _same(_numbers(s.trajectory), _numbers(a.trajectory), s.scheme)
    assert stacked[0].trajectory.steps[-1] == 29 and stacked[0].trajectory.stopped is None


def test_adam_steps_each_scheme_as_alone(tmp_path, monkeypatch):
    """Adam's moments are per element, so one step of the stack is three separate steps (a
    randn scheme whose loss starts in the hundreds among them)."""
    config = _config(tmp_path, **{"init": ["kaiming", "randn", "lecun"], "train.lr": 0.01,
                                  "train.optimizer": "adam", "train.momentum": 0.8,
                                  "train.every": 7, "hist": False})
    stacked, sizes = _trained(config, monkeypatch, stack=3)
    alone, _ = _trained(config, monkeypatch, stack=1)
    assert sizes == [3]
    for s, a in zip(stacked, alone):
        assert s.trajectory.optimizer == "adam" and s.trajectory.stopped is None
        _same(_numbers(s.trajectory), _numbers(a.trajectory), s.scheme)


def test_schemes_stack_by_activation_and_keep_their_order(cli, tmp_path, monkeypatch):
    """Two activations: two stacks (relu's and tanh's); the report keeps the config's order,
    and the JSON a user gets is that of separate runs."""
    config = _config(tmp_path, **{"init": ["kaiming", "xavier"], "activation": ["relu", "tanh"],
                                  "train.steps": 12})
    stacked, sizes = _trained(config, monkeypatch, stack=16)
    alone, later = _trained(config, monkeypatch, stack=1)
    assert sizes == [2, 2]
    assert [r.scheme for r in stacked] == [r.scheme for r in alone] == [
        "kaiming + relu", "kaiming + tanh", "xavier + relu", "xavier + tanh"]
    for s, a in zip(stacked, alone):
        _same(_numbers(s.trajectory), _numbers(a.trajectory), s.scheme)
    # the command stacks too (memory permitting: a few MiB here), and says the same
    report = json.loads(cli("train", str(tmp_path / "net.yaml"), "-q", "-f", "json",
                            "--init", "kaiming", "--init", "xavier", "--steps", "12").stdout)
    assert later == [2]
    assert [run["scheme"] for run in report["runs"]] == ["kaiming + relu", "xavier + relu"]
    assert report["runs"][1]["trajectory"]["loss"] == pytest.approx(alone[2].trajectory.loss,
                                                                    rel=1e-9)


def test_residual_and_normed_models_train_one_by_one(tmp_path, monkeypatch):
    config = _config(tmp_path, **{"init": ["kaiming", "lecun"], "model.block": "residual",
                                  "train.steps": 6})
    runs, sizes = _trained(config, monkeypatch, stack=4)
    assert sizes == [] and len(runs) == 2 and all(r.trajectory.steps[-1] == 5 for r in runs)


def test_the_stack_size_counts_training_memory(tmp_path, monkeypatch):
    """Half the free memory over one scheme's share, at most MAX_STACK; one where too little."""
    config = _config(tmp_path, **{"model.depth": 4, "model.width": 1000,
                                  "train.batch_size": 500})
    monkeypatch.setattr(plan, "available_memory", lambda device: 10**12)
    cpu = pipeline.resolve_device("cpu")
    import torch

    assert train_stack_size(config, 1000, cpu, torch.float64) == plan.MAX_STACK
    # 4 hidden layers of 1000 (plus a 1000-wide input and a 4-wide head): about 4.0e6 weights
    weights = (4 * 1000 * 1000 + 4 * 1000 + 1000 * 4 + 4) * 8
    activations = (4 * 500 * 1000 + 2 * 500 * 4000) * 8
    share = activations + 4 * weights  # sgd: model, stacked copy, gradient, momentum
    monkeypatch.setattr(plan, "available_memory", lambda device: 2 * 3 * share + 100)
    assert train_stack_size(config, 1000, cpu, torch.float64) == 3
    monkeypatch.setattr(plan, "available_memory", lambda device: share)
    assert train_stack_size(config, 1000, cpu, torch.float64) == 1
