"""A compare of schemes on different models (configs/depth100.yaml): each scheme's own model keys,
each model measured as a config of its own, labels that say which model ran."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from actstat.config import load_config
from actstat.pipeline import profile
from actstat.plan import model_groups
from actstat.render_compare import compare_text
from actstat.report import Report

SMALL = ["--width", "8", "--batch-size", "64", "--device", "cpu"]


def test_the_depth100_config_loads_with_six_schemes():
    config = load_config("configs/depth100.yaml")
    models = [config.scheme_model(scheme) for scheme in config.compare]
    assert [(m.block, m.depth, m.norm) for m in models] == [
        ("plain", 100, "none"), ("residual", 50, "none"), ("residual", 50, "none"),
        ("residual", 50, "none"), ("residual", 50, "layernorm"), ("plain", 100, "none")]
    assert [s.init.name for s in config.compare] == ["kaiming", "default", "fixup", "rezero",
                                                     "default", "lsuv"]
    assert config.mixed_models and config.train.steps == 0 and config.train.lr == 0.02
    # one config per model, the schemes' positions kept
    assert [positions for _, positions in model_groups(config)] == [[0, 5], [1, 2, 3], [4]]


@pytest.mark.slow
def test_the_depth100_compare_runs_every_model_with_training(cli):
    # the config at depth 3 (the residual schemes' own depth 50 stays theirs: shrunk by hand)
    raw = json.loads(cli("compare", "configs/depth100.yaml", "--depth", "3", *SMALL,
                         "--steps", "2", "-f", "json", "-q").stdout)
    runs = raw["runs"]
    assert [run["scheme"] for run in runs] == [
        "kaiming + relu (plain)", "default + relu (residual)", "fixup + relu (residual)",
        "rezero + relu (residual)", "default + relu (residual, layernorm)",
        "lsuv + relu (plain)"]
    assert [len(run["train"]["loss"]) for run in runs] == [3] * 6
    assert runs[0]["model"] is None and len(runs[0]["layers"]) == 3 + 1  # hidden rows, the head
    assert all(run["model"].startswith("residual ×50") for run in runs[1:5])
    assert runs[5]["model"] is None and runs[5]["lsuv"]
    assert runs[3]["train"]["multipliers"] and not runs[1]["train"]["multipliers"]
    assert raw["config"]["compare"][1]["model"] == {"block": "residual", "depth": 50}
    # the compare table: a train loss column, and the range of row counts in its title
    report = Report.from_dict(raw)
    text = compare_text(report)
    assert "6 schemes, 3 to 202 layers" in text and "train loss" in text
    assert f"{runs[2]['train']['loss'][0]:.4g} → " in text
    untrained = replace(report, runs=tuple(replace(run, train=None) for run in report.runs))
    assert "train loss" not in compare_text(untrained)


@pytest.mark.slow
def test_each_scheme_is_measured_as_its_own_config_would_be(tmp_path):
    # a mixed compare's runs are the runs of each model's config on its own, in config order
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "model: {depth: 3, width: 8}\ndata: {batch_size: 64}\ndevice: cpu\ntrain: {steps: 2}\n"
        "compare:\n"
        "  - {init: fixup, activation: relu, model: {block: residual, depth: 2}}\n"
        "  - {init: kaiming, activation: tanh}\n"
        "  - {init: default, activation: relu, model: {block: residual, depth: 2, norm: rmsnorm}}\n"
        "  - {init: lecun, activation: tanh}\n")
    report = profile(load_config(mixed))
    alone = {
        "fixup": profile(load_config(None, {
            "model.block": "residual", "model.depth": 2, "model.width": 8, "init": ["fixup"],
            "activation": ["relu"], "data.batch_size": 64, "device": "cpu",
            "train.steps": 2})).runs[0],
        "plain": profile(load_config(None, {
            "model.depth": 3, "model.width": 8, "init": ["kaiming", "lecun"],
            "activation": ["tanh"], "data.batch_size": 64, "device": "cpu",
            "train.steps": 2})).runs,
    }
    fixup, kaiming, rms, lecun = report.runs
    assert fixup.scheme == "fixup + relu (residual)" and fixup.layers == alone["fixup"].layers
    assert fixup.train == alone["fixup"].train
    assert (kaiming.scheme, lecun.scheme) == ("kaiming + tanh (plain)", "lecun + tanh (plain)")
    assert kaiming.layers == alone["plain"][0].layers and lecun.train == alone["plain"][1].train
    assert rms.scheme == "default + relu (residual, rmsnorm)"
    assert any(layer.name == "blocks.1.norm" for layer in rms.layers)




@pytest.mark.slow
def test_a_baseline_of_several_models_checks(cli, tmp_path):
    config = tmp_path / "mixed.yaml"
    config.write_text(
        "model: {depth: 3, width: 8}\ndata: {batch_size: 64}\ndevice: cpu\n"
        "compare:\n  - {init: kaiming, activation: relu}\n"
        "  - {init: rezero, activation: relu, model: {block: residual, depth: 2}}\n")
    baseline = str(tmp_path / "base.json")
    cli("baseline", str(config), "-o", baseline, "-q")
    cli("check", baseline, "-q")
