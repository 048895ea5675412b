"""Memory pre-flight: refuse a run that cannot fit, before allocating it; --force overrides."""

from __future__ import annotations

import pytest

from actstat import pipeline, plan
from actstat.config import load_config


def test_estimate_counts_weights_activations_and_data():
    config = load_config(None, {"model.depth": 2, "model.width": 10, "data.batch_size": 8,
                                "grad": False})
    needed = plan.memory_needed(config, in_features=5, element_bytes=4)
    weights = (5 * 10 + 10) + (10 * 10 + 10) + (10 * 10 + 10)  # two hidden + the head
    assert needed == {"weights": weights * 4, "activations": 4 * 8 * 10 * 4, "data": 8 * 5 * 4}
    with_grad = plan.memory_needed(load_config(None, {
        "model.depth": 2, "model.width": 10, "data.batch_size": 8}), 5, 4)
    assert with_grad["weights"] == 2 * weights * 4
    assert with_grad["activations"] == (4 * 8 * 10 + 2 * 8 * 20) * 4


def test_an_absurd_run_is_refused_with_the_estimate(cli):
    result = cli("run", "--depth", "10000", "--width", "65536", "--device", "cpu", code=2)
    line = result.stderr.strip()
    assert "this run needs about" in line and "GiB free" in line and "--force" in line
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_force_runs_what_the_estimate_refuses(cli, monkeypatch):
    monkeypatch.setattr(plan, "available_memory", lambda device: 1024)  # 1 KiB free
    small = ["--depth", "2", "--width", "8", "--batch-size", "16", "--device", "cpu"]
    assert "needs about" in cli("run", *small, code=2).stderr
    cli("run", *small, "--force")
    cli("compare", *small, "--init", "kaiming,lecun", "--force")


def test_unknown_free_memory_lets_the_run_go(monkeypatch):
    monkeypatch.setattr(plan, "available_memory", lambda device: None)
    config = load_config(None, {"model.depth": 2, "model.width": 8, "data.batch_size": 16,
                                "device": "cpu"})
    assert len(pipeline.profile(config).runs) == 1


@pytest.mark.parametrize("dtype, bytes_per", [("float32", 4), ("float64", 8), ("float16", 2),
                                              ("bfloat16", 2)])
def test_estimate_follows_the_dtype(monkeypatch, dtype, bytes_per):
    seen = []
    monkeypatch.setattr(plan, "memory_needed",
                        lambda config, n, element_bytes: seen.append(element_bytes) or {"x": 0})
    config = load_config(None, {"model.depth": 1, "model.width": 4, "data.batch_size": 8,
                                "device": "cpu", "dtype": dtype})
    pipeline.profile(config)
    assert seen == [bytes_per]
