"""Config: defaults, every shipped config, CLI precedence, and one-line errors for bad input."""

from __future__ import annotations

import pytest
import yaml

from actstat.config import Config, load_config
from actstat.errors import ConfigError
from conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_yaml_is_the_builtin_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == load_config(None)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_resolved_config_fills_every_default_and_reloads(tmp_path):
    config = load_config(write(tmp_path, "init: {name: kaiming, mode: fan_out}\n"
                                         "activation: {name: general_relu, subtract: 0.5}"))
    dumped = config.model_dump(mode="json")
    assert dumped["init"] == [{"name": "kaiming", "distribution": "normal", "mode": "fan_out",
                               "gain": "auto", "bias": {"name": "zeros"}}]
    assert dumped["activation"] == [{"name": "general_relu", "leak": 0.0, "subtract": 0.5,
                                     "clamp_max": None}]
    import yaml
    assert load_config(write(tmp_path, yaml.safe_dump(dumped))) == config


def test_cli_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, "model: {depth: 7, width: 30}\nseed: 3")
    config = load_config(path, {"model.depth": 4, "seed": 9})
    assert (config.model.depth, config.model.width, config.seed) == (4, 30, 9)


def test_cli_init_names_keep_the_files_parameters(tmp_path):
    path = write(tmp_path, "init: [{name: kaiming, mode: fan_out}, lecun]")
    config = load_config(path, {"init": ["lecun", "kaiming", "randn"]})
    assert [(s.name, s.params.get("mode")) for s in config.init] == [
        ("lecun", None), ("kaiming", "fan_out"), ("randn", None)]


def test_compare_list_instead_of_or_besides_a_grid(tmp_path):
    from actstat.plan import schemes

    only = load_config(write(tmp_path, "compare:\n  - {init: xavier, activation: tanh}\n"
                                       "  - {init: {name: kaiming, mode: fan_out}, activation: relu}"))
    assert [(i.name, a.name) for i, a in schemes(only)] == [("xavier", "tanh"), ("kaiming", "relu")]
    assert only.init == [] and schemes(only)[1][0].params["mode"] == "fan_out"
    both = load_config(write(tmp_path, "init: lecun\ncompare: [{init: xavier, activation: tanh}]"))
    assert [(i.name, a.name) for i, a in schemes(both)] == [("lecun", "relu"), ("xavier", "tanh")]


def test_default_schemes_apply_only_when_none_are_given():
    from actstat.config import LESSON_SCHEMES
    from actstat.plan import schemes

    assert len(schemes(load_config(None, default_schemes=LESSON_SCHEMES))) == len(LESSON_SCHEMES)
    assert len(schemes(load_config(None, {"init": ["randn"]}, default_schemes=LESSON_SCHEMES))) == 1
    assert len(schemes(load_config(None))) == 1


def test_width_list_and_widths():
    config = load_config(None, {"model.depth": 3, "model.width": [8, 4, 2]})
    assert config.model.widths == [8, 4, 2]
    assert load_config(None, {"model.depth": 2}).model.widths == [100, 100]


def test_relative_data_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data: {source: x.npy}")
    assert load_config(path).data.source == str(tmp_path / "sub" / "x.npy")
    assert load_config(path, {"data.source": "y.npy"}).data.source == "y.npy"


def test_named_sources_are_not_paths(tmp_path):
    from actstat.config import check_data_source

    path = write(tmp_path, "model: {factory: nets.py:make}\ndata: {source: tokens}")
    config = load_config(path)
    assert config.data.source == "tokens"
    check_data_source(config)  # no file named tokens is looked for
    check_data_source(load_config(None, {"data.source": "gaussian"}))


def test_a_gaussian_shape_records_its_input_size_and_reloads(tmp_path):
    import yaml

    config = load_config(write(tmp_path, "model: {factory: nets.py:make}\n"
                                         "data: {source: gaussian, shape: [3, 224, 224]}"))
    # 150,528 values per sample: more than a hidden layer's width limit, within a sample's
    assert (config.data.input_size, config.data.shape) == (3 * 224 * 224, [3, 224, 224])
    dumped = config.model_dump(mode="json")
    assert dumped["data"]["shape"] == [3, 224, 224]
    assert load_config(write(tmp_path, yaml.safe_dump(dumped))) == config
    agreeing = load_config(write(tmp_path, "model: {factory: nets.py:make}\ndata: {source: "
                                           "gaussian, input_size: 192, shape: [3, 8, 8]}"))
    assert agreeing.data.input_size == 192


def test_a_tokens_shape_records_its_length():
    config = load_config(None, {"data.source": "tokens", "data.shape": [4, 16],
                                "model.factory": "nets.py:make"})
    assert (config.data.length, config.data.shape) == (64, [4, 16])
    assert (config.data.vocab, load_config(None).data.length) == (1000, 32)


def test_a_shape_for_a_file_source_is_checked_when_the_data_is_read():
    # mnist's (or a file's) values per sample are only known once it is read: data.py says so
    config = load_config(None, {"data.shape": [3, 32, 32], "model.factory": "nets.py:make"})
    assert config.data.shape == [3, 32, 32] and config.data.input_size == 784


def test_the_builtin_mlp_refuses_tokens_and_shaped_samples():
    with pytest.raises(ConfigError, match="--data: data.source tokens gives integer ids, for a "
                       "model factory"):
        load_config(None, {"data.source": "tokens"})
    with pytest.raises(ConfigError, match="the built-in MLP takes flat features"):
        load_config(None, {"data.shape": [1, 28, 28]})
    assert load_config(None, {"data.shape": [784]}).data.shape == [784]


def test_a_model_factory_runs_inits_alone(tmp_path):
    (tmp_path / "sub").mkdir()
    config = load_config(write(tmp_path / "sub", "model: {factory: nets.py:make, kwargs: {c: 4}}"))
    # relative to the config file, as a data path is
    assert config.model.factory == f"{tmp_path / 'sub' / 'nets.py'}:make"
    assert config.model.kwargs == {"c": 4}
    assert [spec.name for spec in config.init] == ["keep"] and config.activation == []
    assert [spec.name for spec in load_config(None, {"model.factory": "m:f"},
                                              default_schemes=[]).init] == [
        "keep", "default", "lecun", "xavier", "kaiming"]
    both = load_config(None, {"model.factory": "m:f", "init": ["keep", "he"]})
    assert [spec.name for spec in both.init] == ["keep", "kaiming"]
    dumped = both.model_dump(mode="json")
    assert load_config(write(tmp_path, yaml.safe_dump(dumped))) == both
    assert load_config(None, {"model.factory": "pkg.nets:make"}).model.factory == "pkg.nets:make"


@pytest.mark.parametrize("overrides, message", [
    ({"model.factory": "m:f", "activation": ["relu"]},
     "--model, --act: a model factory runs its own activations: list inits only"),
    ({"init": ["keep"]}, "--init: init 'keep' keeps a model factory's own init; the built-in "
                         "MLP has none"),
    ({"model.factory": "m:f", "init": [{"name": "keep", "gain": 2}]},
     "init 'keep' takes no parameters"),
    ({"model.factory": "m:f", "model.layers": []}, "--layers: model.layers: an empty list selects nothing"),
])
def test_model_factory_mistakes(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_empty_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == load_config(None)


# one line naming the origin, the key, the bad value and what is allowed
BAD = [
    ("model: {dpeth: 3}", ["model.dpeth", "unknown key", "did you mean 'depth'", "width"]),
    ("model: {depth: 0}", ["model.depth", "≥ 1", "got 0"]),
    ("model: {depth: -3}", ["model.depth", "≥ 1", "got -3"]),
    ("model: {depth: 99999999}", ["model.depth", "≤ 10000"]),
    ("model: {depth: twenty}", ["model.depth", "whole number", "'twenty'"]),
    ("model: {depth: 2.5}", ["model.depth", "whole number", "2.5"]),
    ("model: {depth: '20'}", ["model.depth", "whole number", "'20'"]),
    ("model: {bias: 1}", ["model.bias", "true or false"]),
    ("model: {width: 0}", ["model.width", "between 1 and"]),
    ("model: {width: [10, 20]}", ["model", "width lists 2 layers but depth is 20"]),
    ("model: [1, 2]", ["model", "must be a mapping", "depth"]),
    ("dtype: float8", ["dtype", "float32", "bfloat16", "'float8'"]),
    ("device: gpu", ["device", "auto, cpu, cuda or cuda:N", "'gpu'"]),
    ("seed: -1", ["seed", "≥ 0"]),
    ("init: {name: kaimin}", ["init.name", "unknown init 'kaimin'", "did you mean 'kaiming'",
                              "trunc_normal"]),
    ("init: {name: kaiming, mod: fan_out}", ["init.mod", "did you mean 'mode'", "distribution"]),
    ("init: {name: kaiming, mode: fan_inn}", ["init.mode", "'fan_in'", "'fan_out'"]),
    ("init: {name: randn, std: 2}", ["init.std", "takes no parameters"]),
    ("init: {name: normal, std: 0}", ["init.std", "> 0"]),
    ("init: {name: uniform, low: 1, high: 0}", ["init", "low < high"]),
    ("init: {name: xavier, gain: tahn}", ["init", "gain", "did you mean 'tanh'"]),
    ("init: {name: xavier, gain: -1}", ["init", "gain must be a positive number"]),
    ("init: {name: kaiming, bias: {name: normal, stdd: 1}}", ["init.bias.stdd", "'std'"]),
    ("init: {name: kaiming, bias: nope}", ["init.bias", "unknown bias init 'nope'"]),
    ("init: []", ["init is empty", "needs entries in both"]),
    ("init: []\nactivation: []", ["no schemes to run"]),
    ("compare: [{init: kaiming}]", ["compare[0].activation", "is required"]),
    ("compare: [{init: kaimin, activation: relu}]", ["compare[0].init.name", "did you mean"]),
    ("compare: [{init: kaiming, activation: {name: elu, alpha: 0}}]",
     ["compare[0].activation.alpha", "> 0"]),
    ("compare: [{init: kaiming, act: relu}]", ["compare[0].act", "unknown key", "activation"]),
    ("activation: {name: relu6}", ["activation.name", "unknown activation", "relu"]),
    ("activation: [relu, {name: elu, alpha: -1}]", ["activation[1].alpha", "> 0"]),
    ("activation: {name: gelu, approximate: fast}", ["activation.approximate", "'tanh'"]),
    ("data: {batch_size: 0}", ["data.batch_size", "≥ 1"]),
    ("data: {normalize: zscore}", ["data.normalize", "'standardize'"]),
    ("data: {shape: []}", ["data.shape", "at least one dimension", "[1, 28, 28]"]),
    ("data: {shape: [1, 0, 28]}", ["data.shape", "every dimension must be ≥ 1", "got [1, 0, 28]"]),
    ("data: {shape: [2048, 1024]}", ["data.shape", "at most 1,048,576 values",
                                     "this shape holds 2,097,152"]),
    ("data: {shape: 784}", ["data.shape", "must be a list", "got 784"]),
    ("data: {shape: [1, 28.0, 28]}", ["data.shape[1]", "whole number", "28.0"]),
    ("data: {source: gaussian, input_size: 100, shape: [3, 8, 8]}",
     ["data: shape [3, 8, 8] has 192 values per sample but input_size is 100",
      "give one of them, or make them agree"]),
    ("data: {source: tokens, length: 10, shape: [4, 4]}",
     ["data: shape [4, 4] has 16 values per sample but length is 10"]),
    ("data: {input_size: 2000000}", ["data.input_size", "≤ 1048576"]),
    ("data: {vocab: 1}", ["data.vocab", "≥ 2", "got 1"]),
    ("data: {vocab: 100000000}", ["data.vocab", "≤ 16777216"]),
    ("data: {length: 0}", ["data.length", "≥ 1", "got 0"]),
    ("thresholds: {dead: 2}", ["thresholds.dead", "≤ 1"]),
    ("thresholds: {vanishing: 0}", ["thresholds.vanishing", "> 0"]),
    ("colour: red", ["colour", "unknown key", "thresholds"]),
]


@pytest.mark.parametrize("text, words", BAD, ids=[b[0] for b in BAD])
def test_bad_values_give_one_line_naming_file_key_and_value(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for word in words:
        assert word in message, message


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3, column 5: .*"
                                          r"flow sequence at line 2, column 10"):
        load_config(write(tmp_path, "model:\n  depth: [1, 2\nseed: 1\n"))


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping.*not a list"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_missing_and_directory_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_cli_origin_names_the_option():
    with pytest.raises(ConfigError, match=r"^--depth: model.depth: must be ≥ 1 \(got 0\)$"):
        load_config(None, {"model.depth": 0})
    with pytest.raises(ConfigError, match=r"^--init: init\[1\].name: unknown init 'lecnu'"):
        load_config(None, {"init": ["kaiming", "lecnu"]})
