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


@pytest.mark.slow
def test_a_model_by_name_too_large_is_refused_before_it_is_built(cli, monkeypatch):
    """hf:gpt2 at width 131,072: 831 billion parameters, counted from its config on the meta
    device (nothing allocated); a small one with too little memory free is refused too, and
    --force runs it."""
    pytest.importorskip("transformers")
    from actstat import hf

    built = []
    monkeypatch.setattr(hf, "build", lambda *args: built.append(args))
    huge = ["--model", "hf:gpt2", "--model-arg", "n_layer=4", "--model-arg", "n_embd=131072",
            "--model-arg", "n_head=8", "--device", "cpu"]
    result = cli("run", *huge, code=2)
    line = result.stderr.strip()
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "hf:gpt2 has 831 B parameters" in line and "GiB free" in line, line
    assert "--model-arg (n_layer=..., n_embd=..., vocab_size=...)" in line and "--force" in line
    assert built == []  # refused before it was built
    monkeypatch.undo()

    monkeypatch.setattr(plan, "available_memory", lambda device: 1024)  # 1 KiB free
    tiny = ["--model", "hf:gpt2", "--model-arg", "n_layer=1", "--model-arg", "n_embd=16",
            "--model-arg", "n_head=2", "--model-arg", "vocab_size=50", "--batch-size", "2",
            "--length", "8", "--device", "cpu", "-q"]
    assert "parameters" in cli("run", *tiny, code=2).stderr
    cli("run", *tiny, "--force")
