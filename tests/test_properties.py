"""Property-based tests: any valid config gives a complete, strict report; any corrupted config
gives exit 2 and one line."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from actstat.activations import ACTIVATIONS
from actstat.cli import app
from actstat.config import load_config
from actstat.errors import ConfigError
from actstat.inits import ALL_INITS, INITS
from actstat.pipeline import profile
from actstat.registry import resolve
from actstat.render import to_json

pytestmark = pytest.mark.slow  # hundreds of generated configs per test


def strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@st.composite
def valid_configs(draw) -> dict:
    depth = draw(st.integers(1, 4))
    width = draw(st.one_of(st.integers(1, 12), st.lists(st.integers(1, 12), min_size=depth,
                                                         max_size=depth)))
    source = draw(st.sampled_from(["mnist", "gaussian"]))
    return {
        "model": {"depth": depth, "width": width, "bias": draw(st.booleans()),
                  "num_classes": draw(st.integers(10, 12))},
        "init": draw(st.lists(st.sampled_from(sorted(INITS)), min_size=1, max_size=2)),
        "activation": draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=1,
                                    max_size=2)),
        "data": {"source": source, "batch_size": draw(st.integers(1, 48)),
                 "input_size": draw(st.integers(1, 24))},
        "dtype": draw(st.sampled_from(["float32", "float64", "float16", "bfloat16"])),
        "seed": draw(st.integers(0, 2**31)),
        "grad": draw(st.booleans()),
        "theory": draw(st.booleans()),
        "device": "cpu",
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_any_valid_config_gives_a_complete_strict_report(raw):
    config = load_config(None, {key: value for key, value in raw.items()})
    text = to_json(profile(config))
    report = strict(text)
    assert len(report["runs"]) == len(raw["init"]) * len(raw["activation"])
    for run in report["runs"]:
        # the hidden layers, then the head
        assert [entry["index"] for entry in run["layers"]] == list(
            range(1, raw["model"]["depth"] + 2))
        assert (run["layers"][0]["grad"] is None) == (not raw["grad"])
        assert (run["theory"] is None) == (not raw["theory"])


BASE = {"model": {"depth": 2, "width": 8}, "init": "kaiming", "activation": "relu",
        "data": {"batch_size": 16}, "device": "cpu"}

not_a_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


def known(registry, name: str, kind: str) -> bool:
    """Whether the registry takes `name` in some spelling (any case, an alias such as `none`)."""
    try:
        resolve(registry, name, kind)
    except ConfigError:
        return False
    return True


def corruptions():
    """Each strategy returns a function that makes a (deep-copied) config invalid."""
    def put(path, value):
        def apply(raw):
            node = raw
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
            return raw
        return apply

    wrong_type = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
    return st.one_of(
        not_a_name.filter(lambda k: k not in {"model", "init", "activation", "data", "device",
                                               "dtype", "seed", "grad", "theory", "train",
                                               "thresholds", "check", "compare"})
        .map(lambda k: put([k], 1)),
        not_a_name.filter(lambda k: k not in {"depth", "width", "bias", "num_classes", "factory",
                                               "kwargs", "output", "layers"})
        .map(lambda k: put(["model", k], 1)),
        st.integers(max_value=0).map(lambda v: put(["model", "depth"], v)),
        st.integers(max_value=0).map(lambda v: put(["data", "batch_size"], v)),
        st.integers(max_value=0).map(lambda v: put(["model", "width"], v)),
        wrong_type.map(lambda v: put(["model", "depth"], v)),
        wrong_type.filter(lambda v: not isinstance(v, bool)).map(lambda v: put(["seed"], v)),
        st.floats(min_value=1.01, max_value=1e6).map(lambda v: put(["thresholds", "dead"], v)),
        not_a_name.filter(lambda n: not known(ALL_INITS, n, "init")).map(lambda n: put(["init"], n)),
        not_a_name.filter(lambda n: not known(ACTIVATIONS, n, "activation"))
        .map(lambda n: put(["activation"], n)),
        not_a_name.filter(lambda n: n not in ("float32", "float64", "float16", "bfloat16"))
        .map(lambda n: put(["dtype"], n)),
        not_a_name.filter(lambda k: k not in {"name", "distribution", "mode", "gain", "bias"})
        .map(lambda k: put(["init"], {"name": "kaiming", k: 1})),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(corruptions())
def test_any_corrupted_config_exits_2_with_one_line(tmp_path, corrupt):
    raw = corrupt(json.loads(json.dumps(BASE)))
    path = tmp_path / "corrupt.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(path), "-f", "json"])
    assert result.exit_code == 2, (raw, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("actstat: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
