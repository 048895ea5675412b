"""Every user mistake gets one line on stderr and exit 2; numeric accidents still give complete,
strict JSON; an interrupted run writes nothing."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
import torch

from terminal import Terminal


def write_data(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif callable(content):
        content(path)
    return str(path)


DATA_CASES = [
    ("missing.npy", None, "no such file or directory"),
    ("empty.npy", np.zeros((0, 4)), "is empty"),
    ("corrupt.npy", b"\x93NUMPY\x01\x00garbage", "not a readable .npy file"),
    ("corrupt.npz", b"PK\x03\x04garbage", "not a readable .npz file"),
    ("flat.npy", np.arange(12.0), "expected samples × features"),
    ("text.npy", np.array([["a", "b"], ["c", "d"]]), "values must be real numbers"),
    ("nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]]), "holds NaN or Inf values"),
    ("inf.npy", np.array([[0.0, np.inf], [1.0, 2.0]]), "holds NaN or Inf values"),
    ("mismatch.npz", lambda p: np.savez(p, x=np.eye(6), y=np.arange(5)), "5 labels for 6 samples"),
    ("toobig.npz", lambda p: np.savez(p, x=np.eye(6), y=np.arange(6) * 3),
     "labels go up to 15 but model.num_classes is 10"),
]


@pytest.mark.parametrize("name, content, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(cli, tmp_path, name, content, message):
    path = write_data(tmp_path, name, content) if content is not None else str(tmp_path / name)
    result = cli("run", "--data", path, "--batch-size", "2", "--device", "cpu", code=2)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


CONFIG_CASES = [
    ("model:\n  depth: [1, 2\n", "invalid YAML at line"),
    ("- a list\n", "top level must be a mapping"),
    ("model: {dpeth: 3}\n", "did you mean 'depth'"),
    ("model: {depth: twenty}\n", "must be a whole number"),
    ("model: {width: 0}\n", "every width must be between 1 and"),
    ("model: {depth: -1}\n", "must be ≥ 1"),
    ("data: {batch_size: 0}\n", "must be ≥ 1"),
    ("init: {name: kaimng}\n", "did you mean 'kaiming'"),
    ("activation: {name: tanhh}\n", "did you mean 'tanh'"),
    ("init: {name: zeros, std: 1}\n", "takes no parameters"),
    ("train: {steps: 3}\ngrad: false\n", "train.steps needs gradients"),
    # a compare scheme's own model keys (configs/depth100.yaml)
    ("compare:\n  - {init: kaiming, activation: relu, model: {width: 8}}\n",
     "compare[0].model.width: a scheme sets only the model's depth and structure"),
    ("compare:\n  - {init: kaiming, activation: relu, model: {blok: residual}}\n",
     "did you mean 'block'?"),
    ("compare:\n  - {init: kaiming, activation: relu, model: residual}\n",
     "compare[0].model: must be a mapping of model keys"),
    ("compare:\n  - {init: kaiming, activation: relu, model: {norm: groupnorm}}\n",
     "compare[0].model.norm: must be one of"),
    ("compare:\n  - {init: kaiming, activation: relu, model: {block: residual, branch_depth: 0}}\n",
     "compare[0].model.branch_depth: must be ≥ 1"),
    ("compare:\n  - {init: kaiming, activation: relu, model: {multiplier: 0.0}}\n",
     "compare[0].model: multiplier scales a residual branch"),
    ("model: {block: residual}\ncompare:\n  - {init: fixup, activation: relu, model: {block: plain}}\n",
     "compare[0].init: fixup needs residual blocks"),
]


@pytest.mark.parametrize("text, message", CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES])
def test_bad_config_files(cli, tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = cli("run", str(path), code=2)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_randn_relu_overflows_float32_at_depth_100_and_still_reports(cli):
    result = cli("run", "--init", "randn", "--depth", "100", "--device", "cpu", "-f", "json")
    raw = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(name))
    layers = raw["runs"][0]["layers"]
    assert len(layers) == 100 + 1  # the hidden layers and the head
    first = next(entry["index"] for entry in layers if "nonfinite" in entry["flags"])
    assert all("nonfinite" in entry["flags"] for entry in layers[first - 1:])
    assert layers[-1]["post"]["std"] is None and raw["runs"][0]["verdict"] == "nonfinite"


@pytest.mark.slow
def test_float16_at_depth_20_says_how_it_reduced(cli):
    result = cli("run", "--init", "randn", "--dtype", "float16", "--device", "cpu", "-f", "json")
    raw = json.loads(result.stdout)
    assert raw["config"]["dtype"] == "float16" and len(raw["runs"][0]["layers"]) == 20 + 1
    assert "statistics were reduced in float32" in result.stderr


def test_the_report_says_which_seed_ran_and_seeds_change_the_weights(cli):
    small = ["--depth", "2", "--width", "8", "--batch-size", "32", "--device", "cpu",
             "-f", "json", "--data", "gaussian"]
    one = json.loads(cli("run", *small, "--seed", "1").stdout)
    two = json.loads(cli("run", *small, "--seed", "2").stdout)
    assert (one["config"]["seed"], two["config"]["seed"]) == (1, 2)
    assert one["runs"][0]["layers"][0]["pre"] != two["runs"][0]["layers"][0]["pre"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pseudo-terminals")
def test_an_interrupted_compare_leaves_the_previous_output_untouched(tmp_path):
    output = tmp_path / "report.json"
    output.write_text('{"previous": true}\n')
    before = output.read_bytes()
    # one scheme per activation, so no two are stacked: the progress bar says "measured" after
    # the first, and Ctrl-C lands while the other five are measured, however fast the machine
    with Terminal("compare", "--depth", "50", "--width", "256", "--batch-size", "500",
                  "--init", "kaiming", "--act", "relu,tanh,sigmoid,gelu,selu,silu",
                  "--device", "cpu", "-f", "json", "-o", str(output)) as terminal:
        measured = terminal.read_until(b"measured ", timeout=300)
        assert measured and terminal.process.poll() is None, terminal.output.decode(errors="replace")
        terminal.process.send_signal(signal.SIGINT)
        code = terminal.finish(timeout=60)
    printed = terminal.output.decode(errors="replace")
    assert code == 130, printed
    assert "interrupted; no output was written" in printed and "Traceback" not in printed
    assert "wrote " not in printed
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_devices_without_cuda(cli, device):
    result = cli("run", "--device", device, code=2)
    assert f"device '{device}': CUDA is not available" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_unwritable_output_directory(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        result = cli("run", "--depth", "2", "-o", str(locked / "r.json"), code=2)
        assert "cannot write" in result.stderr
    finally:
        locked.chmod(0o700)


def test_a_model_by_name_without_transformers_says_the_extra(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    result = cli("run", "--model", "hf:gpt2", "--device", "cpu", code=2)
    line = result.stderr.strip()
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "hf: models need the transformers library" in line
    assert "pip install 'actstat[hf]'" in line


# the second-contact messages: each says what is wrong once, in the words the user typed
OPTION_CASES = [
    (["run", "--width", "100,x"], "actstat: error: --width: model.width[1]: must be a whole "
     "number (got 'x')"),
    (["run", "--width", "x"], "actstat: error: --width: model.width: must be a whole number or "
     "a list (got 'x')"),
    (["train", "--optimizer", "foo"], "actstat: error: --optimizer: train.optimizer: must be one "
     "of 'sgd' or 'adam' (got 'foo')"),
    (["train", "--every", "x"], "actstat: error: --every: train.every: must be a whole number "
     "(got 'x')"),
    (["run", "--dept", "3"], "actstat run: error: no such option --dept (did you mean --depth?) "
     "(see 'actstat run --help')"),
    (["train", "--layers", "x"], "actstat train: error: train has no option --layers (it is an "
     "option of run, compare, baseline, check) (see 'actstat train --help')"),
    (["run", "--act", "general_relu(subtract=x)"], "actstat: error: --act: activation.subtract: "
     "must be a number (got 'x')"),
    (["run", "--act", "general_relu(sub=1)"], "actstat: error: --act: activation.sub: unknown "
     "key (valid keys for activation 'general_relu': leak, subtract, clamp_max)"),
    (["run", "--init", "kaiming(fan_out)"], "actstat: error: --init: 'kaiming(fan_out)': write "
     "each parameter as key=value, as in kaiming(fan_out=...)"),
    (["run", "--init", "kaiming(mode=fan_in"], "actstat: error: --init: 'kaiming(mode=fan_in' "
     "is not a name with parameters, such as general_relu(subtract=0.5)"),
    (["run", "--data", "nope"], "actstat: error: --data: data.source: must be mnist, gaussian, "
     "tokens, or an existing .npy, .npz or .pt file or MNIST IDX directory (got 'nope': no such "
     "file or directory)"),
    (["check", "missing.yaml"], "actstat: error: missing.yaml: config file not found"),
    (["check", "--config", "missing.yaml"], "actstat: error: missing.yaml: config file not found"),
    (["check", "missing.json"], "actstat: error: missing.json: no such file"),
    (["plot"], "actstat plot: error: Missing argument 'REPORT'. (see 'actstat plot --help')"),
]


@pytest.mark.parametrize("args, message", OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_option_mistakes_are_told_once_in_the_users_words(cli, args, message):
    result = cli(*args, code=2)
    assert result.stderr.strip() == message and result.stdout == ""


@pytest.mark.parametrize("content", ['{"a": 1}', "{}"])
def test_a_json_file_that_is_not_a_report_says_so(cli, tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    result = cli("check", str(path), code=2)
    assert "not an actstat report: it has no schema_version key" in result.stderr
    assert "None" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_label_in_yaml_is_read_as_its_mapping(cli, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("activation: general_relu(subtract=x)\n")
    result = cli("run", str(path), code=2)
    assert result.stderr.strip() == (f"actstat: error: {path}: activation.subtract: must be a "
                                     "number (got 'x')")
