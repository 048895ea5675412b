"""actstat train --tensorboard: the event files read back hold the report's numbers, step for step;
without the extra, one line and exit 2 before any training."""

from __future__ import annotations

import json
import sys

import pytest

from actstat.report import Report
from actstat.tensorboard_log import TensorBoardLog, run_directory_name

pytest.importorskip("tensorboard")  # installed by the test extra; a bare install skips this file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

MODEL = ("--depth", "3", "--width", "16", "--device", "cpu", "--seed", "1",
         "--init", "kaiming", "--train-batch", "32", "--lr", "0.05")
ARGS = (*MODEL, "--act", "relu,tanh", "--steps", "12", "--every", "5")


def _events(directory) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_event_files_hold_the_recorded_scalars_and_histograms(cli, tmp_path):
    board = tmp_path / "board"
    out = tmp_path / "report.json"
    cli("train", *ARGS, "--hist", "--tensorboard", str(board), "-q", "-f", "json", "-o", str(out))
    report = Report.from_dict(json.loads(out.read_text()))
    assert sorted(p.name for p in board.iterdir()) == ["kaiming+relu", "kaiming+tanh"]
    for run in report.runs:
        t = run.trajectory
        assert t.steps == (0, 5, 10, 11)
        events = _events(board / run_directory_name(run.scheme))
        assert t.accuracy is not None  # the bundled MNIST sample comes with labels
        expected = {"loss": t.loss, "accuracy": t.accuracy}
        for layer in t.layers:
            for stat in ("mean", "std", "near_zero", "dead", "grad_std"):
                if getattr(layer, stat) is not None:
                    expected[f"{stat}/{layer.name}"] = getattr(layer, stat)
        assert sorted(events.Tags()["scalars"]) == sorted(expected)
        for tag, values in expected.items():
            written = [(e.step, e.value) for e in events.Scalars(tag)]
            assert [s for s, _ in written] == [s for s, v in zip(t.steps, values) if v is not None]
            # TensorBoard keeps a scalar as float32
            assert [v for _, v in written] == pytest.approx(
                [v for v in values if v is not None], rel=1e-6, abs=1e-30), tag
        assert sorted(events.Tags()["histograms"]) == sorted(f"hist/{la.name}" for la in t.layers)
        for layer in t.layers:
            low, high = layer.hist_range
            bins = len(layer.histogram[0])
            written = events.Histograms(f"hist/{layer.name}")
            assert [h.step for h in written] == list(t.steps)
            for h, counts, mean, std in zip(written, layer.histogram, layer.mean, layer.std):
                value = h.histogram_value
                assert list(value.bucket) == list(counts)  # exactly the recorded counts
                assert list(value.bucket_limit) == pytest.approx(
                    [low + (high - low) * (i + 1) / bins for i in range(bins)], rel=1e-12)
                assert (value.min, value.max, value.num) == (low, high, sum(counts))
                assert value.sum == pytest.approx(mean * sum(counts), rel=1e-9, abs=1e-9)
                assert value.sum_squares == pytest.approx((std**2 + mean**2) * sum(counts),
                                                          rel=1e-9)


@pytest.mark.slow
def test_only_what_was_recorded_is_written(cli, tmp_path):
    board = tmp_path / "board"
    cli("train", *MODEL, "--data", "gaussian", "--act", "tanh", "--steps", "3", "--every", "1",
        "--tensorboard", str(board), "-q", "-f", "json")
    events = _events(board / "kaiming+tanh")
    assert events.Tags()["histograms"] == []
    scalars = events.Tags()["scalars"]
    # tanh has no flat region: its units cannot die; the head's logits count when exactly 0
    assert "dead/1" not in scalars and "dead/head" in scalars
    assert "loss" in scalars and "accuracy" not in scalars  # gaussian data has no labels
    assert [e.step for e in events.Scalars("loss")] == [0, 1, 2]


def test_without_the_extra_one_line_and_exit_2_before_training(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # find_spec then finds nothing
    board, out = tmp_path / "board", tmp_path / "report.json"
    result = cli("train", *ARGS, "--tensorboard", str(board), "-o", str(out), code=2)
    assert result.stderr.strip().splitlines() == [
        "actstat: error: --tensorboard needs the tensorboard package, an optional extra: "
        "pip install 'actstat[tensorboard]'"]
    assert not board.exists() and not out.exists()


def test_a_file_in_the_way_is_an_error_before_training(cli, tmp_path):
    board = tmp_path / "board"
    board.write_text("not a directory")
    result = cli("train", *ARGS, "--tensorboard", str(board), code=2)
    assert "board" in result.stderr and "Traceback" not in result.stderr


def test_run_directory_names_are_safe_and_distinct(tmp_path):
    assert run_directory_name("kaiming(mode='fan_out') + relu") == "kaiming_mode=_fan_out_+relu"
    assert run_directory_name("xavier [bias normal(std=0.1)] + general_relu(leak=0.1)") == (
        "xavier_bias_normal_std=0.1_+general_relu_leak=0.1")
    with TensorBoardLog(tmp_path) as log:
        log.scheme("a/b + relu")
        log.scheme("a?b + relu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_b+relu", "a_b+relu_2"]
