"""`actstat check` against a training baseline (a report written by `actstat train -f json`):
trained again, compared at every recorded step, the first step that drifted named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

# every test trains (a second or more each)
pytestmark = pytest.mark.slow

N, FEATURES, CLASSES = 240, 20, 4
RNG = np.random.default_rng(11)
X = RNG.standard_normal((N, FEATURES))
Y = (X[:, :CLASSES].argmax(axis=1)).astype(np.int64)  # learnable: the largest of 4 features
STEPS, EVERY = 25, 5
LAYER_METRICS = ("std", "mean", "grad_std", "near_zero", "dead")


def _write_config(tmp_path: Path, *, lr: float = 0.05, every: int = EVERY) -> Path:
    np.savez(tmp_path / "xy.npz", images=X, labels=Y)
    path = tmp_path / "net.yaml"
    path.write_text("\n".join([
        "model: {depth: 3, width: 32, num_classes: 4}",
        "data: {source: xy.npz, normalize: none, batch_size: 100}",
        "dtype: float64", "device: cpu", "seed: 2",
        "init: kaiming", "activation: relu",
        f"train: {{steps: {STEPS}, every: {every}, batch_size: 16, lr: {lr}}}"]) + "\n",
        encoding="utf-8")
    return path


@pytest.fixture
def trained(cli, tmp_path) -> Path:
    """A training baseline beside its config file (check re-reads the file)."""
    config = _write_config(tmp_path)
    base = tmp_path / "base.json"
    cli("train", str(config), "-q", "-f", "json", "-o", str(base))
    return base


def _trajectory(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["runs"][0]["trajectory"]


def test_checked_against_itself_every_recorded_value_is_the_same(cli, trained):
    """Same seed on the CPU, same numbers: with no tolerance at all (atol 0, rtol 1e-12) every
    value through training passes, and the baseline rewritten with the new run's values holds
    the very same trajectory."""
    before = _trajectory(trained)
    result = cli("check", str(trained), "--rtol", "0.000000000001", "--atol", "0", "-f", "json")
    body = json.loads(result.stdout)
    assert body["passed"] and body["drifts"] == []
    # one loss per recorded step, and every layer's five statistics (an absent dead fraction,
    # the head's, is counted as at init: compared and absent on both sides)
    steps, layers = len(before["steps"]), len(before["layers"])
    assert before["steps"] == [0, 5, 10, 15, 20, 24]
    assert body["trajectory"]["compared"] == steps * (1 + layers * len(LAYER_METRICS)) == 126
    assert body["trajectory"]["first_drift_step"] is None
    text = cli("check", str(trained)).stdout
    assert "all 126 values through training within tolerance" in text and "passed" in text
    cli("check", str(trained), "--update", "-q")
    assert _trajectory(trained) == before


def _first_drift(a: dict, b: dict, rtol: float = 0.05, atol: float = 0.05) -> int | None:
    """The first step at which two trajectories (same steps) differ beyond check's default
    tolerances, computed here: stds and the loss by ratio, means in units of the expected
    std, fractions absolutely."""
    for i, step in enumerate(a["steps"]):
        if abs(math.log(b["loss"][i] / a["loss"][i])) > math.log1p(rtol):
            return step
        for old, new in zip(a["layers"], b["layers"]):
            for stat in ("std", "grad_std"):
                if abs(math.log(new[stat][i] / old[stat][i])) > math.log1p(rtol):
                    return step
            if abs(new["mean"][i] - old["mean"][i]) > atol * old["std"][i]:
                return step
            for stat in ("near_zero", "dead"):
                if old[stat] is not None and abs(new[stat][i] - old[stat][i]) > atol:
                    return step
    return None


def test_a_changed_learning_rate_fails_at_the_first_step_that_drifted(cli, trained, tmp_path):
    # the same training with another learning rate, written here as a plain train report
    _write_config(tmp_path, lr=0.08)
    other = tmp_path / "other.json"
    cli("train", str(tmp_path / "net.yaml"), "-q", "-f", "json", "-o", str(other))
    expected = _first_drift(_trajectory(trained), _trajectory(other))
    # step 0 is before the first update: the learning rate cannot show there
    assert expected is not None and expected > 0

    result = cli("check", str(trained), "-f", "json", "--junit-xml",
                 str(tmp_path / "junit.xml"), code=1)
    body = json.loads(result.stdout)
    assert not body["passed"] and body["config_changes"] == ["train.lr: 0.05 → 0.08"]
    assert body["drifted"] == 0  # the measurement at init does not train
    assert body["trajectory"]["first_drift_step"] == expected
    assert body["trajectory"]["schemes"] == [{"scheme": "kaiming + relu",
                                              "first_drift_step": expected}]
    steps = [d["step"] for d in body["drifts"]]
    assert steps == sorted(steps) and steps[0] == expected
    assert f"first at step {expected} (kaiming + relu" in result.stderr
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    failed = {case.get("name"): case.find("failure").text for case in suite
              if case.find("failure") is not None}
    assert failed and set(failed) <= {"loss", "train_std", "train_mean", "train_grad_std",
                                      "train_near_zero", "train_dead"}
    assert any(text.startswith(f"step {expected}, ") for text in failed.values())

    markdown = cli("check", str(trained), "-f", "markdown", code=1).stdout
    assert "| scheme | step | layer | metric |" in markdown
    assert f"first at step {expected} (kaiming + relu" in markdown


def test_the_first_drifted_step_is_the_first_edited_value(cli, trained):
    """Values edited in the baseline, the training unchanged: only they drift, and the first
    drifted step is the earliest edit, whatever order they were made in."""
    report = json.loads(trained.read_text(encoding="utf-8"))
    t = report["runs"][0]["trajectory"]
    assert t["layers"][0]["name"] == "1" and t["layers"][3]["name"] == "head"
    t["layers"][1]["near_zero"][3] += 0.1   # step 15, layer 2: a fraction, 0.1 > atol 0.05
    t["layers"][0]["near_zero"][4] += 0.04  # step 20: within atol, no drift
    t["layers"][1]["std"][2] *= 1.2         # step 10, layer 2: ×1/1.2 is beyond ×1.05
    t["loss"][5] *= 1.01                    # step 24: the loss within rtol, no drift
    trained.write_text(json.dumps(report), encoding="utf-8")

    result = cli("check", str(trained), code=1)
    assert "2 of 126 values through training drifted; first at step 10 (kaiming + relu, " \
        "layer 2, train_std)" in result.stdout, result.stdout
    body = json.loads(cli("check", str(trained), "-f", "json", code=1).stdout)
    assert [(d["step"], d["name"], d["metric"]) for d in body["drifts"]] == [
        (10, "2", "train_std"), (15, "2", "train_near_zero")]
    near_zero = body["drifts"][1]
    assert near_zero["difference"] == pytest.approx(-0.1) and near_zero["tolerance"] == 0.05


def test_changed_recorded_steps_fail_and_say_why(cli, trained, tmp_path):
    _write_config(tmp_path, every=10)
    result = cli("check", str(trained), code=1)
    assert ("kaiming + relu: recorded steps differ from the baseline's: 0, 5, 10, 15, 20, 24 "
            "(6 steps) → 0, 10, 20, 24 (4 steps); first differing step 5; compared at the 4 "
            "step(s) both recorded; the config changed train.every: 5 → 10") in result.stdout
    # the steps both recorded are still compared, and agree
    assert "all 84 values through training within tolerance" in result.stdout
    assert "train.every: 5 → 10" in result.stderr


def test_an_init_change_drifts_at_step_0_and_at_init(cli, trained):
    body = json.loads(cli("check", str(trained), "--init", "lecun", "-f", "json", code=1).stdout)
    assert body["drifted"] > 0 and body["trajectory"]["first_drift_step"] == 0
    assert {d["step"] for d in body["drifts"]} >= {None, 0}


def test_trajectory_metrics_need_a_training_baseline(cli, tmp_path):
    base = tmp_path / "base.json"
    cli("baseline", "--depth", "2", "--width", "16", "--batch-size", "64", "--device", "cpu",
        "-q", "-o", str(base))
    result = cli("check", str(base), "--metrics", "loss,train_std", code=2)
    assert "compare a training baseline's trajectories" in result.stderr
    assert "actstat train" in result.stderr


def test_an_interrupted_training_is_no_baseline(cli, trained):
    report = json.loads(trained.read_text(encoding="utf-8"))
    report["runs"][0]["trajectory"] |= {"stopped": "interrupted", "stopped_at": 24}
    trained.write_text(json.dumps(report), encoding="utf-8")
    result = cli("check", str(trained), code=2)
    assert "its training was interrupted (Ctrl-C)" in result.stderr


def test_each_scheme_names_its_own_first_drifted_step(cli, tmp_path):
    config = _write_config(tmp_path)
    base = tmp_path / "two.json"
    cli("train", str(config), "--init", "kaiming,lecun", "-q", "-f", "json", "-o", str(base))
    report = json.loads(base.read_text(encoding="utf-8"))
    assert [run["scheme"] for run in report["runs"]] == ["kaiming + relu", "lecun + relu"]
    report["runs"][1]["trajectory"]["loss"][4] *= 1.5  # lecun's step 20 only
    base.write_text(json.dumps(report), encoding="utf-8")

    # the config stored in the report (its --init included) trains the same 25 steps again
    result = cli("check", str(base), "--stored-config", code=1)
    assert "first step that drifted: kaiming + relu none, lecun + relu 20" in result.stdout
    body = json.loads(cli("check", str(base), "--stored-config", "-f", "json", code=1).stdout)
    assert body["trajectory"]["first_drift_step"] == 20
    assert body["trajectory"]["schemes"] == [
        {"scheme": "kaiming + relu", "first_drift_step": None},
        {"scheme": "lecun + relu", "first_drift_step": 20}]
    assert [(d["scheme"], d["step"], d["metric"]) for d in body["drifts"]] == [
        ("lecun + relu", 20, "loss")]


def test_a_factory_models_training_baseline_names_its_rows(cli, tmp_path, monkeypatch):
    np.savez(tmp_path / "xy.npz", images=X, labels=Y)
    nets = tmp_path / "nets.py"
    nets.write_text("from torch import nn\n"
                    "def small():\n"
                    "    return nn.Sequential(nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 4))\n")
    (tmp_path / "net.yaml").write_text(
        "model: {factory: 'nets.py:small'}\n"
        "data: {source: xy.npz, normalize: none, batch_size: 100}\n"
        "dtype: float64\ndevice: cpu\nseed: 2\ninit: keep\n"
        "train: {steps: 20, every: 5, batch_size: 16, lr: 0.05}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cli("train", "net.yaml", "-q", "-f", "json", "-o", "base.json")
    assert "passed" in cli("check", "base.json").stdout
    # the factory's second layer twice as large at init: its rows drift from step 0 on
    nets.write_text(nets.read_text().replace("nn.Linear(8, 4))",
                                             "nn.Linear(8, 4))\n    net[2].weight.data *= 2\n"
                                             "    return net").replace("return nn.Sequential",
                                                                        "net = nn.Sequential"))
    body = json.loads(cli("check", "base.json", "-f", "json", code=1).stdout)
    assert body["trajectory"]["first_drift_step"] == 0
    step0 = {(d["name"], d["metric"]) for d in body["drifts"] if d["step"] == 0}
    assert ("2", "train_std") in step0 and ("0", "train_std") not in step0
