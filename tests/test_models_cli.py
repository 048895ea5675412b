"""`actstat run|compare|baseline|check --model FILE.py:FACTORY`: a user's model from the command
line, with real factory files written to tmp_path, as a user would."""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

FACTORIES = textwrap.dedent('''
    """Factories for the tests: what a user's nets.py holds."""
    import torch
    from torch import nn


    def cnn(channels: int = 4):
        c = channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(2 * c, 10),
        )


    def mlp(width: int = 16):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(),
                             nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))


    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc, self.act = nn.Linear(width, width), nn.ReLU()

        def forward(self, x):
            return x + self.act(self.fc(x))


    class Residual(nn.Module):
        def __init__(self, width: int = 16, depth: int = 3):
            super().__init__()
            self.inp = nn.Linear(784, width)
            self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.blocks(self.inp(x)))


    class TinyLM(nn.Module):
        def __init__(self, vocab: int = 1000, dim: int = 8):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
                for _ in range(2))
            self.head = nn.Linear(dim, vocab)

        def forward(self, ids):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(x)


    def small_lm():
        return TinyLM(vocab=50)


    def rgb():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))


    class ByKeyword(nn.Module):
        """A forward that takes its input by keyword only, as many wrappers do."""

        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, *, pixels):
            return self.net(pixels)


    def compiled():
        return torch.compile(mlp())
''')

BAD = textwrap.dedent('''
    import torch
    from torch import nn

    WIDTH = 3


    def raises():
        raise ValueError("width must be even")


    def returns_nothing():
        nn.Linear(784, 10)


    def wrong_width():
        return nn.Sequential(nn.Linear(100, 10), nn.ReLU(), nn.Linear(10, 10))


    class Says(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            self.fc(x)
            return "done"


    class Classes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(x).argmax(-1)


    def embedding():
        return nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 10))


    def parameterless():
        return nn.Sequential(nn.Flatten(), nn.ReLU())


    def scripted():
        return torch.jit.script(nn.Sequential(nn.Linear(784, 10), nn.ReLU()))
''')

SMALL = ["--batch-size", "32", "--device", "cpu"]


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """tmp_path holding nets.py and bad.py, as the working directory."""
    (tmp_path / "nets.py").write_text(FACTORIES)
    (tmp_path / "bad.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def report_of(result) -> dict:
    return json.loads(result.stdout)


def layer_names(run: dict) -> list[str]:
    return [layer["name"] for layer in run["layers"]]


# ---------------------------------------------------------------------------------------------
# run --model on the kinds of model a user brings


@pytest.mark.slow
def test_cnn_on_mnist_is_fed_images(cli, nets):
    report = report_of(cli("run", "--model", "nets.py:cnn", *SMALL, "-f", "json", "-q"))
    assert report["schema_version"] == 4
    assert report["input"]["shape"] == [1, 28, 28]
    assert report["input"]["batch_size"] == 32 and report["input"]["labelled"] is True
    (run,) = report["runs"]
    assert run["model"] == "nets.py:cnn" and run["init"] == "keep"
    assert run["scheme"] == "nets.py:cnn + keep"
    rows = {layer["name"]: layer for layer in run["layers"]}
    # Conv2d -> BatchNorm2d -> ReLU: the conv's output, then the norm's row with its ReLU
    assert (rows["0"]["kind"], rows["0"]["module"]) == ("weight", "Conv2d")
    assert (rows["1"]["kind"], rows["1"]["module"]) == ("norm", "BatchNorm2d → ReLU")
    assert (rows["4"]["kind"], rows["4"]["module"]) == ("weight", "Conv2d → ReLU")
    assert rows["8"]["module"] == "Linear" and rows["8"]["fan_in"] == 8
    # a BatchNorm in train mode normalises each channel over the batch: mean 0, std 1
    assert abs(rows["1"]["pre"]["mean"]) < 1e-5 and rows["1"]["pre"]["std"] == pytest.approx(1, abs=1e-3)
    assert min(rows["1"]["post"]["min"], 0) == 0  # after the ReLU


def test_mlp_on_mnist(cli, nets):
    report = report_of(cli("run", "--model", "nets.py:mlp", *SMALL, "-f", "json", "-q"))
    assert report["input"]["shape"] == [784]
    (run,) = report["runs"]
    assert layer_names(run) == ["1", "3", "5"]
    assert [layer["module"] for layer in run["layers"]] == ["Linear → ReLU", "Linear → Tanh",
                                                           "Linear"]
    assert run["layers"][1]["post"]["saturated"] is not None  # tanh's saturation is measured


def test_transformer_on_tokens(cli, nets):
    report = report_of(cli("run", "--model", "nets.py:TinyLM", "--data", "tokens", *SMALL,
                           "-f", "json", "-q"))
    assert report["input"]["shape"] == [32]  # data.length's default
    assert report["input"]["mean"] is None  # token ids have no moments
    (run,) = report["runs"]
    names = layer_names(run)
    assert names[0] == "embed" and run["layers"][0]["module"] == "Embedding"
    assert "blocks.0" in names and "blocks.1" in names  # the repeated blocks' residual stream
    assert names[-1] == "head"
    assert all(math.isfinite(layer["post"]["std"]) for layer in run["layers"])


def test_tokens_vocab_and_length_from_yaml(cli, nets):
    (nets / "lm.yaml").write_text(textwrap.dedent("""
        model: {factory: nets.py:TinyLM, kwargs: {vocab: 20}}
        data: {source: tokens, vocab: 20, length: 5, batch_size: 8}
        device: cpu
    """))
    report = report_of(cli("run", "lm.yaml", "-f", "json", "-q"))
    assert report["input"]["shape"] == [5] and report["input"]["batch_size"] == 8
    assert "[0, 20)" in report["input"]["source"]


def test_gaussian_images_shaped_by_yaml(cli, nets):
    (nets / "rgb.yaml").write_text(textwrap.dedent("""
        model: {factory: nets.py:rgb}
        data: {source: gaussian, shape: [3, 16, 16], batch_size: 16}
        device: cpu
    """))
    report = report_of(cli("run", "rgb.yaml", "-f", "json", "-q"))
    assert report["input"]["shape"] == [3, 16, 16]
    assert report["config"]["data"]["input_size"] == 3 * 16 * 16
    (run,) = report["runs"]
    assert run["layers"][0]["module"] == "Conv2d → ReLU"
    assert run["layers"][0]["fan_in"] == 3 * 3 * 3


def test_layers_by_class(cli, nets):
    report = report_of(cli("run", "--model", "nets.py:cnn", "--layers", "Conv2d", *SMALL,
                           "-f", "json", "-q"))
    (run,) = report["runs"]
    assert layer_names(run) == ["0", "4"]
    assert {layer["module"].split(" ")[0] for layer in run["layers"]} == {"Conv2d"}


def test_layers_by_a_class_outside_torch_nn(cli, nets):
    """`--layers Block`: the user's own class, matched by its name (as GPT2Block is)."""
    report = report_of(cli("run", "--model", "nets.py:Residual", "--layers", "Block", *SMALL,
                           "-f", "json", "-q"))
    run = report["runs"][0]
    assert layer_names(run) == ["blocks.0", "blocks.1", "blocks.2"]
    assert {layer["module"] for layer in run["layers"]} == {"Block"}


@pytest.mark.slow
def test_a_forward_that_takes_its_input_by_keyword(cli, nets):
    by_keyword = report_of(cli("run", "--model", "nets.py:ByKeyword", *SMALL, "-f", "json",
                               "-q"))
    plain = report_of(cli("run", "--model", "nets.py:mlp", *SMALL, "-f", "json", "-q"))
    assert [layer["post"] for layer in by_keyword["runs"][0]["layers"]] == \
        [layer["post"] for layer in plain["runs"][0]["layers"]]
    trained = report_of(cli("train", "--model", "nets.py:ByKeyword", "--steps", "3", "--every",
                            "1", "--device", "cpu", "-f", "json", "-q"))
    assert len(trained["runs"][0]["trajectory"]["loss"]) == 3


@pytest.mark.slow
def test_a_compiled_model_is_measured_as_its_module(cli, nets):
    """torch.compile's wrapper: the rows of the module it wraps (no `_orig_mod.` names), the
    same numbers, and nothing compiled (its graph would be traced again for every hook)."""
    compiled = report_of(cli("run", "--model", "nets.py:compiled", *SMALL, "-f", "json", "-q"))
    plain = report_of(cli("run", "--model", "nets.py:mlp", *SMALL, "-f", "json", "-q"))
    assert layer_names(compiled["runs"][0]) == layer_names(plain["runs"][0])
    assert [layer["post"] for layer in compiled["runs"][0]["layers"]] == \
        [layer["post"] for layer in plain["runs"][0]["layers"]]


def test_layers_by_name_pattern(cli, nets):
    report = report_of(cli("run", "--model", "nets.py:Residual", "--layers", "blocks.*", *SMALL,
                           "-f", "json", "-q"))
    (run,) = report["runs"]
    names = layer_names(run)
    assert names and all(name.startswith("blocks.") for name in names), names
    assert {"blocks.0", "blocks.1", "blocks.2"} <= set(names)


@pytest.mark.slow
def test_every_format(cli, nets, tmp_path):
    args = ["run", "--model", "nets.py:cnn", *SMALL, "-q"]
    table = cli(*args).stdout
    assert "nets.py:cnn + keep" in table and "BatchNorm2d → ReLU" in table
    csv = cli(*args, "-f", "csv").stdout.splitlines()
    header = csv[0].split(",")
    assert "name" in header and "module" in header
    report = report_of(cli(*args, "-f", "json"))
    assert len(csv) - 1 == len(report["runs"][0]["layers"])
    markdown = cli(*args, "-f", "markdown").stdout.splitlines()
    assert "| layer | module | units |" in markdown[markdown.index("### nets.py:cnn + keep: "
                                                                 + report["runs"][0]["verdict"]) + 2]
    # text columns left-aligned, numbers right-aligned
    assert any(line.startswith("|---|---|---:|") for line in markdown)
    assert any(line.startswith("| 1 | BatchNorm2d → ReLU | 4 |") for line in markdown)
    # the JSON reads back as a Report (the schema validates it)
    path = tmp_path / "r.json"
    cli(*args, "-f", "json", "-o", str(path))
    from actstat.report import read_report

    back = read_report(path)
    assert back.runs[0].model == "nets.py:cnn"
    assert [layer.name for layer in back.runs[0].layers] == layer_names(report["runs"][0])


def test_yaml_factory_relative_to_the_file_from_another_directory(cli, nets, tmp_path,
                                                                  monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (nets / "nets.py").rename(project / "nets.py")
    (project / "cnn.yaml").write_text(textwrap.dedent("""
        model:
          factory: nets.py:cnn   # relative to this file
          kwargs: {channels: 2}
        data: {batch_size: 16}
        device: cpu
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = report_of(cli("run", str(project / "cnn.yaml"), "-f", "json", "-q"))
    (run,) = report["runs"]
    assert run["layers"][0]["module"] == "Conv2d"
    assert run["layers"][0]["fan_out"] == 2  # kwargs reached the factory
    assert report["config"]["model"]["kwargs"] == {"channels": 2}


# ---------------------------------------------------------------------------------------------
# inits: keep by default, re-initialised on request


def test_keep_is_the_default_and_two_inits_give_two_runs(cli, nets):
    default = report_of(cli("run", "--model", "nets.py:mlp", *SMALL, "-f", "json", "-q"))
    assert [run["init"] for run in default["runs"]] == ["keep"]
    both = report_of(cli("run", "--model", "nets.py:mlp", "-i", "keep,kaiming", *SMALL,
                         "-f", "json", "-q"))
    assert [run["scheme"] for run in both["runs"]] == ["nets.py:mlp + keep",
                                                       "nets.py:mlp + kaiming"]
    assert both["runs"][0]["layers"] == default["runs"][0]["layers"]
    keep_std = [layer["post"]["std"] for layer in both["runs"][0]["layers"]]
    kaiming_std = [layer["post"]["std"] for layer in both["runs"][1]["layers"]]
    assert all(not math.isclose(a, b, rel_tol=1e-3) for a, b in zip(keep_std, kaiming_std))


@pytest.mark.slow
def test_compare_without_inits_compares_the_model_inits(cli, nets):
    report = report_of(cli("compare", "--model", "nets.py:mlp", *SMALL, "-f", "json", "-q"))
    assert [run["init"] for run in report["runs"]] == ["keep", "default", "lecun", "xavier",
                                                      "kaiming"]
    table = cli("compare", "--model", "nets.py:mlp", *SMALL, "-q").stdout
    for init in ("keep", "default", "lecun", "xavier", "kaiming"):
        assert f"nets.py:mlp + {init}" in table


def test_kaiming_reinitialisation_matches_torch_and_numpy(cli, nets):
    """kaiming on a user's model: every weight layer in module order drawn as
    torch.nn.init.kaiming_normal_ (gain √2, fan_in) from one generator seeded with the seed,
    biases zero; the first layer's pre and post std as NumPy computes them."""
    import torch

    from actstat.config import load_config
    from actstat.data import load_batch

    seed = 7
    report = report_of(cli("run", "--model", "nets.py:mlp", "-i", "kaiming", "--seed", str(seed),
                           *SMALL, "-f", "json", "-q"))
    first = report["runs"][0]["layers"][0]
    sys.path.insert(0, str(nets))
    try:
        import nets as user_nets  # the same file, imported independently
    finally:
        sys.path.remove(str(nets))
        sys.modules.pop("nets", None)
    torch.manual_seed(seed)
    model = user_nets.mlp()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in",
                                              nonlinearity="relu", generator=g)
                torch.nn.init.zeros_(module.bias)
    config = load_config(None, {"data.batch_size": 32, "device": "cpu", "seed": seed})
    batch = load_batch(config.data, seed=seed, device=torch.device("cpu"), dtype=torch.float32,
                       num_classes=10)
    x = batch.inputs.numpy().reshape(32, -1).astype(np.float64)
    w = model[1].weight.detach().numpy().astype(np.float64)
    pre = x @ w.T  # bias zero
    post = np.maximum(pre, 0)
    assert first["pre"]["std"] == pytest.approx(np.std(pre), rel=1e-5)
    assert first["post"]["std"] == pytest.approx(np.std(post), rel=1e-5)
    assert first["pre"]["mean"] == pytest.approx(np.mean(pre), abs=1e-5 * np.std(pre))
    # the draw really is √2/√fan_in: the weight's own std, to sampling error over 784·16 values
    assert np.std(w) == pytest.approx(math.sqrt(2 / 784), rel=0.03)
    # and differs from the factory's own init (keep)
    keep = report_of(cli("run", "--model", "nets.py:mlp", "--seed", str(seed), *SMALL,
                         "-f", "json", "-q"))
    assert not math.isclose(keep["runs"][0]["layers"][0]["pre"]["std"], first["pre"]["std"],
                            rel_tol=1e-2)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_report(cli, nets):
    args = ["run", "--model", "nets.py:cnn", "-i", "keep,lecun", *SMALL, "-f", "json", "-q"]
    first, second = report_of(cli(*args)), report_of(cli(*args))
    assert first["runs"] == second["runs"]
    other = report_of(cli(*args, "--seed", "1"))
    assert other["runs"][0]["layers"] != first["runs"][0]["layers"]


# ---------------------------------------------------------------------------------------------
# baseline and check


@pytest.mark.slow
def test_baseline_then_check(cli, nets):
    cli("baseline", "--model", "nets.py:cnn", *SMALL, "-o", "base.json", "-q")
    assert json.loads(Path("base.json").read_text())["runs"][0]["model"] == "nets.py:cnn"
    passed = cli("check", "base.json")
    assert "passed" in passed.stdout
    # the factory's file is edited: its first conv's weights drawn 3 times larger
    source = Path("nets.py").read_text()
    Path("nets.py").write_text(source.replace(
        "def cnn(channels: int = 4):\n    c = channels\n    return nn.Sequential(",
        "def cnn(channels: int = 4):\n    c = channels\n    model = nn.Sequential(").replace(
        "        nn.Flatten(), nn.Linear(2 * c, 10),\n    )\n",
        "        nn.Flatten(), nn.Linear(2 * c, 10),\n    )\n"
        "    with torch.no_grad():\n        model[0].weight.mul_(3)\n    return model\n", 1))
    assert "mul_(3)" in Path("nets.py").read_text()
    failed = cli("check", "base.json", code=1)
    assert "post_std" in failed.stdout
    assert "check FAILED" in failed.stderr


@pytest.mark.slow
def test_check_names_a_models_rows_as_its_table_does(cli, nets):
    """A drifted row of a user's model is named by its module path, as the run's table names it
    (`4`, `8:input`), not by its position (5, 6), in the table, on stderr and in the JSON."""
    cli("baseline", "--model", "nets.py:cnn", *SMALL, "-o", "base.json", "-q")
    names = layer_names(json.loads(Path("base.json").read_text())["runs"][0])
    assert names != [str(i) for i in range(1, len(names) + 1)]
    drifted = cli("check", "base.json", "--seed", "1", "-f", "json", code=1)
    result = json.loads(drifted.stdout)
    assert result["drifts"], "another seed must drift somewhere, or this test checks nothing"
    for drift in result["drifts"]:
        assert drift["name"] == names[drift["layer"] - 1]
    first = result["drifts"][0]
    assert f"first at layer {first['name']} (" in drifted.stderr
    assert f"nets.py:cnn + keep, layer {first['name']}, {first['metric']}:" in drifted.stderr
    bound = json.loads(cli("check", "base.json", "--max-drift", "1.01", "-f", "json",
                           code=1).stdout)
    assert bound["breaches"]
    assert [b["name"] for b in bound["breaches"]] == [names[b["layer"] - 1]
                                                      for b in bound["breaches"]]


def test_fail_on_names_the_row_as_the_table_does(cli, nets):
    # all-zero weights: the first conv's units all compute the same (symmetric)
    args = ["run", "--model", "nets.py:cnn", "-i", "zeros", *SMALL, "-f", "json"]
    report = report_of(cli(*args, "-q"))
    flagged = [(layer["name"], flag) for layer in report["runs"][0]["layers"]
               for flag in layer["flags"]]
    assert flagged[0] == ("0", "symmetric")  # position 1, name 0
    failed = cli(*args, "--fail-on", "symmetric", code=1)
    assert "first: nets.py:cnn + zeros, layer 0, symmetric" in failed.stderr


def test_check_another_factory(cli, nets):
    cli("baseline", "--model", "nets.py:cnn", *SMALL, "-o", "base.json", "-q")
    Path("copy.py").write_text(Path("nets.py").read_text())
    same = cli("check", "base.json", "--model", "copy.py:cnn")
    assert "model.factory: 'nets.py:cnn' → 'copy.py:cnn'" in same.stdout
    different = cli("check", "base.json", "--model", "copy.py:mlp", code=1)
    assert "nets.py:cnn + keep → copy.py:mlp + keep" in different.stdout


def test_check_refuses_a_report_made_in_python(cli, nets):
    import torch

    import actstat

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    actstat.profile(model, torch.randn(8, 4)).save(nets / "api.json")
    result = cli("check", "api.json", code=2)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "actstat.profile" in lines[0] and "Traceback" not in result.stderr
    assert "actstat baseline --model" in lines[0]


# ---------------------------------------------------------------------------------------------
# mistakes: one line on stderr, exit 2, nothing on stdout


def assert_one_line(result, *fragments: str) -> str:
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("actstat: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


MISTAKES = {
    "missing file": (["--model", "nowhere.py:make"], ["nowhere.py", "does not exist"]),
    "missing name": (["--model", "nets.py:resnet"], ["'nets.py' has no 'resnet'", "cnn"]),
    "not callable": (["--model", "bad.py:WIDTH"], ["bad.py:WIDTH", "not a function or class"]),
    "factory raises": (["--model", "bad.py:raises"],
                       ["raised ValueError: width must be even", "bad.py, line"]),
    "returns no module": (["--model", "bad.py:returns_nothing"],
                          ["returned None, not a torch.nn.Module"]),
    "forward fails": (["--model", "bad.py:wrong_width"],
                      ["forward pass failed in 0 (Linear)", "(32, 784)"]),
    "string output": (["--model", "bad.py:Says"], ["no floating-point tensor", "str"]),
    "integer output": (["--model", "bad.py:Classes"], ["no floating-point tensor"]),
    "act with a model": (["--model", "nets.py:mlp", "--act", "relu"], ["its own activations"]),
    "steps with a model": (["--model", "nets.py:mlp", "--steps", "3"], ["steps", "actstat train --model"]),
    "tokens without a model": (["--data", "tokens"], ["tokens", "built-in MLP"]),
    "embedding on mnist": (["--model", "bad.py:embedding"], ["Embedding", "--data tokens"]),
    "vocabulary past the embedding": (["--model", "nets.py:small_lm", "--data", "tokens"],
                                      ["data.vocab is 1000", "50 rows"]),
    "nothing measurable": (["--model", "bad.py:parameterless"], ["nothing to measure"]),
    "no layer selected": (["--model", "nets.py:mlp", "--layers", "Conv2d"],
                          ["--layers", "Conv2d", "classes: Flatten, Linear, ReLU"]),
    "no class or name selected": (["--model", "nets.py:Residual", "--layers", "Blok"],
                                  ["matched layers= (--layers, model.layers) Blok", "Block"]),
    "TorchScript": (["--model", "bad.py:scripted"],
                    ["RecursiveScriptModule is a TorchScript model", "before it is scripted"]),
    "no colon": (["--model", "nets.py"], ["no ':'"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_mistakes_are_one_line(cli, nets, mistake):
    args, fragments = MISTAKES[mistake]
    assert_one_line(cli("run", *args, *SMALL, code=2), *fragments)


def test_mistakes_in_compare_baseline_and_check_too(cli, nets):
    assert_one_line(cli("compare", "--model", "bad.py:raises", *SMALL, code=2), "width must be")
    assert_one_line(cli("baseline", "--model", "bad.py:raises", *SMALL, "-o", "b.json", code=2),
                    "width must be")
    assert not Path("b.json").exists()
    assert_one_line(cli("check", "--model", "nets.py:mlp", "--act", "relu", "--max-drift", "2",
                        *SMALL, code=2), "its own activations")


# ---------------------------------------------------------------------------------------------
# the built-in MLP is as it was


@pytest.mark.slow
def test_mlp_report_of_the_previous_version_still_checks(cli, tmp_path, monkeypatch):
    """tests/data/report_v1.json was written by the code before --model (schema 1) with
    `compare -i kaiming,zeros -a relu,tanh -d 3 -w 16 -b 64 --hist --device cpu`: it still
    passes `check`, and today's run gives its numbers."""
    baseline = tmp_path / "v1.json"
    baseline.write_text((ROOT / "tests" / "data" / "report_v1.json").read_text())
    monkeypatch.chdir(tmp_path)
    checked = cli("check", str(baseline))
    assert "passed" in checked.stdout
    assert "(absent)" not in checked.stdout + checked.stderr  # new keys at their defaults
    old = json.loads(baseline.read_text())
    new = report_of(cli("compare", "-i", "kaiming,zeros", "-a", "relu,tanh", "-d", "3", "-w", "16",
                        "-b", "64", "--hist", "--device", "cpu", "-f", "json", "-q"))
    assert [run["scheme"] for run in new["runs"]] == [run["scheme"] for run in old["runs"]]
    for before, after in zip(old["runs"], new["runs"]):
        assert after["model"] is None
        assert len(after["layers"]) == len(before["layers"]) + 1 == 3 + 1  # + the head
        for a, b in zip(before["layers"], after["layers"]):
            for part in ("pre", "post", "grad"):
                for key, value in a[part].items():
                    if isinstance(value, float):
                        assert b[part][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (
                            before["scheme"], a["index"], part, key)
                    else:
                        assert b[part][key] == value, (before["scheme"], a["index"], part, key)


# ---------------------------------------------------------------------------------------------
# tables in an 80-column terminal


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
@pytest.mark.parametrize("command", ["run", "compare"])
def test_model_tables_read_right_at_80_columns(nets, command):
    from rich.cells import cell_len

    from test_layout import ANSI, in_terminal

    code, raw = in_terminal([command, "--model", f"{nets / 'nets.py'}:cnn", *SMALL, "-q",
                             "-i", "keep,kaiming"], 80, {"NO_COLOR": "1"})
    shown = ANSI.sub("", raw)
    assert code == 0, shown
    assert "…" not in shown
    assert all(cell_len(line) <= 80 for line in shown.splitlines()), shown
    if command == "run":
        # a user's layers are named by module path: the module column says what each one is
        assert "BatchNorm2d → ReLU" in shown and "Conv2d" in shown, shown
        for name in ("0", "1", "4:input", "4", "8"):
            assert re.search(rf"^{re.escape(name)}\s", shown, re.M), (name, shown)
    else:
        assert "keep" in shown and "kaiming" in shown
        assert "post std 1 → L" in shown and "grad 1/L" in shown
    assert "left out to fit 80 columns" in shown



def test_data_without_labels_takes_cross_entropy_on_the_drawn_targets_when_they_fit():
    import torch
    from torch.nn import functional as F

    from actstat.pipeline import drawn_target_loss

    g = torch.Generator().manual_seed(0)
    logits, classes = torch.randn(6, 10, generator=g), torch.randint(10, (6,), generator=g)
    assert torch.equal(drawn_target_loss(logits, classes), F.cross_entropy(logits, classes))
    tokens = torch.randint(50, (4, 7), generator=g)
    lm = torch.randn(4, 7, 50, generator=g)  # a language model's logits over the vocabulary
    assert torch.allclose(drawn_target_loss(lm, tokens),
                          F.cross_entropy(lm.reshape(-1, 50), tokens.reshape(-1)))
    # logits that do not fit the targets (too few classes, another shape): the output's sum
    assert torch.equal(drawn_target_loss(lm[..., :20], tokens), lm[..., :20].sum())
    assert torch.equal(drawn_target_loss(logits, tokens), logits.sum())


def test_a_gaussian_run_gives_the_head_a_gradient(cli, nets):
    (nets / "g.yaml").write_text(textwrap.dedent("""
        model: {factory: nets.py:mlp}
        data: {source: gaussian, batch_size: 64}
        device: cpu
    """))
    (run,) = report_of(cli("run", "g.yaml", "-f", "json", "-q"))["runs"]
    head = run["layers"][-1]
    # the sum of the logits has dL/d(logits) = 1 everywhere: a gradient std of exactly 0
    assert head["grad"]["std"] > 0 and math.log(10) * 0.8 < run["loss"] < math.log(10) * 1.5
