"""Report and render: strict JSON that round-trips, CSV, Markdown, and golden tables."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from actstat.config import load_config
from actstat.errors import ActstatError
from actstat.pipeline import profile
from actstat.records import (
    SCHEMA_VERSION,
    GradStats,
    InputStats,
    LayerStats,
    PostStats,
    Run,
    TensorStats,
    Theory,
    TrainLayer,
    TrainStats,
)
from actstat.render import CSV_COLUMNS, mean_text, table_text, to_csv, to_json, to_markdown, verdict_line
from actstat.report import Report


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (and JSON itself) do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def layer(index, pre_std, post_mean, post_std, *, flags=(), dead=0.0, saturated=None,
          grad=None, expected=None):
    pre = TensorStats(mean=0.01 * index, std=pre_std, min=-3.0, max=3.5, near_zero=0.0123,
                      expected_std=expected and expected[0])
    post = PostStats(mean=post_mean, std=post_std, min=0.0, max=3.5, near_zero=0.5,
                     dead=dead, saturated=saturated, expected_mean=expected and expected[1],
                     expected_std=expected and expected[2])
    return LayerStats(index, 784 if index == 1 else 100, 100, pre, post, grad, tuple(flags))


def synthetic_report() -> Report:
    """A hand-made Report, so golden files test rendering alone, not BLAS rounding."""
    healthy = Run("kaiming + relu", "kaiming", {"mode": "fan_in", "bias": {"name": "zeros"}},
                  "relu", {}, "healthy", 2.47,
                  (layer(1, 1.366, 0.643, 0.8738, grad=GradStats(1e-5, 0.0032, 0.005, 0.0962),
                         expected=(1.402, 0.5594, 0.8186)),
                   layer(2, 1.5, 0.57, 0.8, dead=0.03, grad=GradStats(-2e-5, 0.0041, 0.01, 0.07),
                         expected=(1.41, 0.5625, 0.82)),
                   layer(3, 1.4, 0.5, 0.7123, dead=0.15,
                         grad=GradStats(0.0, 0.00427, 0.02, 0.14), expected=(1.42, 0.567, 0.83))),
                  TrainStats(3, 0.1, (2.47, 2.31, 2.28, 2.25),
                             (TrainLayer(1, 0.0113, 0.16, 0.007, False),
                              TrainLayer(2, 0.0, 0.0, 0.0, True),
                              TrainLayer(3, None, 0.0, None, True)), 0.0688, 0.0268),
                  Theory(1.0035, None, "critical"))
    broken = Run("randn + tanh", "randn", {"bias": {"name": "zeros"}}, "tanh", {}, "saturated",
                 None,
                 (layer(1, 27.04, 0.01, 0.978, dead=None, saturated=0.83, flags=["saturated"]),
                  layer(2, 123456.0, None, None, dead=None, saturated=None,
                        flags=["nonfinite"]),
                  layer(3, 0.0004, 0.0, 0.00001234, dead=None, saturated=0.0,
                        flags=["symmetric", "vanishing"])))
    return Report(SCHEMA_VERSION, "0.1.0", "2.13.0+cpu", "cpu",
                  {"thresholds": {"vanishing": 0.1, "exploding": 10.0, "dead": 0.5,
                                  "saturated": 0.5}},
                  InputStats("mnist: the bundled 5,000-image MNIST sample", 1000, 784, True,
                             -0.0071, 0.9914),
                  (healthy, broken))


@pytest.fixture(scope="module")
def real_report() -> Report:
    config = load_config(None, {"init": ["kaiming", "randn"], "activation": ["relu", "tanh"],
                                "model.depth": 4, "model.width": 32, "device": "cpu"})
    return profile(config)


@pytest.mark.slow
def test_json_is_strict_and_round_trips(real_report):
    text = to_json(real_report)
    raw = strict_json(text)
    assert Report.from_dict(raw) == real_report
    assert to_json(Report.from_dict(raw)) == text


def test_theory_round_trips_and_old_reports_without_it_still_load():
    raw = strict_json(to_json(synthetic_report()))
    assert raw["runs"][0]["theory"] == {"chi1": 1.0035, "q_star": None, "phase": "critical"}
    assert raw["runs"][0]["layers"][0]["post"]["expected_mean"] == 0.5594
    assert Report.from_dict(raw) == synthetic_report()
    for run in raw["runs"]:  # a schema-1 report written before the theory fields existed
        run.pop("theory")
        for entry in run["layers"]:
            entry["pre"].pop("expected_std")
            entry["post"].pop("expected_std")
            entry["post"].pop("expected_mean")
    old = Report.from_dict(raw)
    assert old.runs[0].theory is None and old.runs[0].layers[0].post.expected_std is None


def test_grad_and_train_in_json():
    raw = strict_json(to_json(synthetic_report()))
    healthy, broken = raw["runs"]
    assert healthy["layers"][0]["grad"] == {"mean": 1e-5, "std": 0.0032, "weight_std": 0.005,
                                            "grad_to_data": 0.0962}
    assert healthy["loss"] == 2.47 and broken["loss"] is None
    assert broken["layers"][0]["grad"] is None and broken["train"] is None
    assert healthy["train"]["loss"] == [2.47, 2.31, 2.28, 2.25]
    assert healthy["train"]["layers"][2] == {"index": 3, "weight_change": None,
                                             "weight_delta": 0.0, "bias_delta": None,
                                             "still_symmetric": True, "name": ""}
    assert healthy["train"]["multipliers"] == []  # no residual block with an α


@pytest.mark.slow
def test_json_contract(real_report):
    raw = strict_json(to_json(real_report))
    assert raw["schema_version"] == SCHEMA_VERSION
    assert {"actstat_version", "torch_version", "device", "config", "input", "runs"} <= set(raw)
    assert raw["config"]["model"]["depth"] == 4  # fully resolved
    assert [(r["init"], r["act"]) for r in raw["runs"]] == [
        ("kaiming", "relu"), ("kaiming", "tanh"), ("randn", "relu"), ("randn", "tanh")]
    for run in raw["runs"]:
        # the 4 hidden layers, then the head (its logits: a row of one tensor)
        assert [entry["index"] for entry in run["layers"]] == [1, 2, 3, 4, 5]
        assert run["layers"][-1]["pre"] is None and run["layers"][-1]["fan_out"] == 10
        for entry in run["layers"]:
            assert {"index", "name", "kind", "module", "fan_in", "fan_out", "pre", "post",
                    "flags"} <= set(entry)
            assert (entry["name"], entry["kind"]) == (str(2 * (entry["index"] - 1)), "weight")
            assert entry["pre"] is None or {"mean", "std", "min", "max", "near_zero"} <= set(
                entry["pre"])
            assert {"mean", "std", "dead", "saturated"} <= set(entry["post"])
            assert {"mean", "std", "weight_std", "grad_to_data"} <= set(entry["grad"])
            assert isinstance(entry["flags"], list)


def test_nonfinite_numbers_become_null():
    raw = strict_json(to_json(synthetic_report()))
    second = raw["runs"][1]["layers"][1]
    assert second["post"]["mean"] is None and second["flags"] == ["nonfinite"]


@pytest.mark.slow
def test_an_overflowing_run_completes_with_nulls_and_says_where():
    config = load_config(None, {"init": ["randn"], "model.depth": 8, "dtype": "float16",
                                "device": "cpu", "grad": False})
    report = profile(config)
    raw = strict_json(to_json(report))
    layers = raw["runs"][0]["layers"]
    assert len(layers) == 8 + 1  # the hidden layers and the head
    first = next(entry["index"] for entry in layers if "nonfinite" in entry["flags"])
    assert 2 <= first <= 6  # the forward pass overflows float16 a few layers in
    assert all("nonfinite" in entry["flags"] for entry in layers[first - 1:])
    assert any(value is None for value in layers[-1]["post"].values())
    assert report.runs[0].verdict == "nonfinite"


@pytest.mark.slow
def test_overflowing_gradients_are_nonfinite_too():
    config = load_config(None, {"init": ["randn"], "model.depth": 8, "dtype": "float16",
                                "device": "cpu"})
    raw = strict_json(to_json(profile(config)))
    layers = raw["runs"][0]["layers"]
    # gradients grow backwards: the first layers' gradients overflow, and say so
    assert "nonfinite" in layers[0]["flags"]
    assert layers[0]["pre"]["std"] is not None  # the forward numbers there are still finite
    assert len(layers) == 8 + 1


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(schema_version=99), "schema_version is 99"),
    (lambda raw: raw.pop("runs"), "report: runs: is required"),
    (lambda raw: raw["runs"][0]["layers"][0].pop("pre"), r"report: runs\[0\]\.layers\[0\]\.pre: is required"),
])
def test_from_dict_refuses_other_documents(change, message):
    raw = strict_json(to_json(synthetic_report()))
    change(raw)
    with pytest.raises(ActstatError, match=message):
        Report.from_dict(raw)
    with pytest.raises(ActstatError, match="top level is a list, not a JSON object"):
        Report.from_dict([])


@pytest.mark.slow
def test_csv_has_one_row_per_scheme_and_layer(real_report):
    rows = list(csv.DictReader(io.StringIO(to_csv(real_report))))
    assert len(rows) == 4 * (4 + 1) and tuple(rows[0]) == CSV_COLUMNS  # + the head
    first = real_report.runs[0].layers[0]
    assert float(rows[0]["post_std"]) == first.post.std
    assert rows[0]["post_saturated"] == ""  # relu is unbounded: an empty cell, not 0
    synthetic = list(csv.DictReader(io.StringIO(to_csv(synthetic_report()))))
    assert synthetic[5]["flags"] == "symmetric;vanishing"


@pytest.mark.slow
def test_markdown_has_a_table_per_scheme(real_report):
    text = to_markdown(real_report)
    assert text.count("### ") == 4 and text.count("**Verdict:**") == 4
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and
                  line[2].isdigit()]
    assert len(table_rows) == 16


def test_verdict_lines():
    report = synthetic_report()
    assert verdict_line(report.runs[0], report) == (
        "kaiming + relu: healthy — post std 0.8738 → 0.7123 over 3 layers, up to 15.0% of units "
        "dead; grad std layer 1 / layer 3 = 0.7494; mean field: critical (χ₁ = 1.004); no flags")
    assert verdict_line(report.runs[1], report) == (
        "randn + tanh: saturated from layer 1 (1 of 3 layers) — 83.0% of values saturated "
        "(> 50.0%); post std 0.978 → 1.23e-05 over 3 layers")


@pytest.mark.parametrize("mean, std, dtype, shown", [
    (1.86e-09, 1.0, "float32", "≈0"),       # a BatchNorm's output mean on one machine...
    (4.61e-09, 1.0, "float32", "≈0"),       # ...and on another
    (-7.33e-09, 1.0, "float32", "≈0"),      # a LayerNorm's
    (0.0, 0.5, "float32", "≈0"),            # noise that summed to exactly zero
    (4 * 2**-23, 1.0, "float32", "≈0"),     # the threshold itself, then just above it
    (5e-07, 1.0, "float32", "5.00e-07"), (-5e-07, 1.0, "float32", "-5.00e-07"),
    (1e-08, 1e-03, "float32", "1.00e-08"),  # small, but not next to a smaller spread
    (2e-16, 1.0, "float64", "≈0"), (1e-12, 1.0, "float64", "1.00e-12"),
    (0.01, 1.0, "bfloat16", "≈0"), (0.05, 1.0, "bfloat16", "0.05"),
    (1e-09, 1.0, None, "≈0"),               # no dtype recorded: float32's rule
    (0.3, 0.0, "float32", "0.3"), (0.0, 0.0, "float32", "0"),  # a constant tensor keeps its mean
    (1e-09, None, "float32", "1.00e-09"), (None, 1.0, "float32", "—"),
])
def test_a_mean_that_is_float_noise_prints_as_about_zero(mean, std, dtype, shown):
    assert mean_text(mean, std, dtype) == shown


def test_a_norm_layers_mean_prints_as_noise_and_json_keeps_the_number():
    import numpy as np
    import torch

    import actstat

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64),
                                torch.nn.Linear(64, 10))
    inputs = 3 * torch.randn(256, 32) + 1
    with torch.no_grad():
        out = model[1](model[0](inputs)).numpy().astype(np.float64)
    # analytically 0: what float32 leaves is far below the rule's 4 roundings of the spread
    assert abs(out.mean()) < 0.5 * 2**-23 * out.std()
    report = actstat.profile(model, inputs)
    norm = next(layer for layer in report.runs[0].layers if layer.module == "LayerNorm")
    assert abs(norm.post.mean - out.mean()) < 1e-6
    saved = strict_json(to_json(report))["runs"][0]["layers"]
    assert next(layer for layer in saved if layer["name"] == norm.name)["post"]["mean"] == (
        norm.post.mean)
    lines = table_text(report).splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    row = next(line for line in lines if line.startswith(norm.name + " ")).split()
    assert row[header.index("post mean")] == "≈0", lines
    assert "≈0" not in "\n".join(line for line in lines if not line.startswith(norm.name + " "))


def test_golden_table(golden):
    golden("run_table.txt", table_text(synthetic_report()))


def test_golden_markdown(golden):
    golden("run_report.md", to_markdown(synthetic_report()))


def test_golden_csv(golden):
    golden("run_report.csv", to_csv(synthetic_report()))


@pytest.mark.slow
def test_a_version_1_report_reads_as_the_builtin_mlp_it_describes():
    """tests/data/report_v1.json was written by actstat before schema version 2 (`compare -i
    kaiming,zeros -a relu,tanh -d 3 -w 16 -b 64 --hist --device cpu`): it reads, its layers are
    the MLP's Linear modules 0, 2, 4, and today's run of its config gives its numbers."""
    from actstat.config import config_from_dict
    from actstat.pipeline import profile
    from actstat.report import read_report

    path = Path(__file__).parent / "data" / "report_v1.json"
    old = read_report(path)
    assert old.schema_version == 1 and len(old.runs) == 4
    assert [(layer.name, layer.kind) for layer in old.runs[0].layers] == [
        ("0", "weight"), ("2", "weight"), ("4", "weight")]
    assert old.input.shape is None and old.runs[0].model is None
    new = profile(config_from_dict(old.config, str(path)))
    assert new.schema_version == SCHEMA_VERSION
    for before, after in zip(old.runs, new.runs, strict=True):
        assert (before.scheme, before.verdict) == (after.scheme, after.verdict)
        assert [layer.name for layer in after.layers] == ["0", "2", "4", "6"]  # + the head
        for a, b in zip(before.layers, after.layers[:-1], strict=True):
            assert (a.name, a.flags, a.fan_in, a.fan_out) == (b.name, b.flags, b.fan_in, b.fan_out)
            for side in ("pre", "post"):
                for key in ("mean", "std", "min", "max", "near_zero"):
                    x, y = getattr(getattr(a, side), key), getattr(getattr(b, side), key)
                    assert x == pytest.approx(y, rel=1e-6, abs=1e-9), (a.name, side, key)
            assert a.post.histogram == b.post.histogram


@pytest.mark.slow
def test_a_version_2_baseline_checks_on_its_hidden_layers(cli, tmp_path):
    """tests/data/report_v2.json was written by actstat at schema version 2 (`baseline` of a
    3-layer MLP, kaiming and zeros × relu and relu - 0.5), before the head was a row: it reads,
    `check` compares its hidden layers (and says the head is not held to it), and today's
    numbers of those layers are its numbers, dead fractions included (the floor rule of
    version 3 counts relu - 0.5's dead units as version 2's pre-activation rule did)."""
    from actstat.config import config_from_dict
    from actstat.pipeline import profile
    from actstat.report import read_report

    source = Path(__file__).parent / "data" / "report_v2.json"
    old = read_report(source)
    assert old.schema_version == 2 and [len(run.layers) for run in old.runs] == [3] * 4
    new = profile(config_from_dict(old.config, str(source)))
    for before, after in zip(old.runs, new.runs, strict=True):
        assert [layer.name for layer in after.layers] == ["0", "2", "4", "6"]  # + the head
        for a, b in zip(before.layers, after.layers[:3]):
            assert (a.flags, a.post.dead) == (b.flags, b.post.dead), (before.scheme, a.name)
            assert a.post.std == pytest.approx(b.post.std, rel=1e-6, abs=1e-12)
    baseline = tmp_path / "report_v2.json"
    baseline.write_bytes(source.read_bytes())
    result = cli("check", str(baseline))
    assert "all 72 values within tolerance" in result.stdout, result.stdout
    assert "holds no head row: the hidden layers are compared" in result.stderr


@pytest.mark.slow
def test_a_version_3_residual_baseline_checks(cli, tmp_path):
    """tests/data/report_v3.json was written by actstat at schema version 3 (`baseline` of a
    pre-norm residual MLP, kaiming and gpt2 × relu), before the stream, branches and
    attention were judged: it reads, and today's run of its config passes `check` against it
    (its rows and numbers are today's)."""
    from actstat.report import read_report

    source = Path(__file__).parent / "data" / "report_v3.json"
    assert read_report(source).schema_version == 3
    baseline = tmp_path / "report_v3.json"
    baseline.write_bytes(source.read_bytes())
    result = cli("check", str(baseline))
    assert "all 140 values within tolerance" in result.stdout, result.stdout
    assert "passed" in result.stdout


@pytest.mark.slow
def test_a_version_2_training_baseline_checks_without_its_dead_fractions(cli, tmp_path):
    """tests/data/train_v2.json (`actstat train` at schema version 2: relu and relu - 0.5,
    6 steps) counted dead units as exactly 0, so relu - 0.5's never died: its train_dead is not
    compared (and `check` says so); everything else still is, and passes."""
    baseline = tmp_path / "train_v2.json"
    baseline.write_bytes((Path(__file__).parent / "data" / "train_v2.json").read_bytes())
    result = cli("check", str(baseline))
    assert "through training within tolerance (loss, train_std, train_mean, train_grad_std, " \
           "train_near_zero)" in result.stdout, result.stdout
    assert "train_dead is not compared" in result.stderr
    assert "passed" in result.stdout


@pytest.mark.parametrize("enabled, dtype, said", [
    (True, "float32", "kernel"), (False, "float32", "torch (ACTSTAT_KERNELS=0)"),
    (True, "float64", "torch (float64)")])
def test_the_report_records_which_reductions_ran(monkeypatch, tmp_path, enabled, dtype, said):
    """A user comparing two machines' reports can tell whether the C kernel reduced them."""
    import actstat.fused
    from actstat.report import read_report

    if enabled and not actstat.fused.AVAILABLE:
        pytest.skip("actstat._kernels was not built (no C compiler at install)")
    monkeypatch.setattr(actstat.fused, "ENABLED", enabled)
    config = load_config(None, {"model.depth": 1, "model.width": 4, "data.batch_size": 8,
                                "device": "cpu", "dtype": dtype})
    report = profile(config)
    assert report.reduction == said
    assert read_report(report.save(tmp_path / "r.json")).reduction == said
