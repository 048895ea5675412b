"""Name -> factory registries: one lookup with a helpful error, and parameter validation."""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, create_model

from actstat.errors import ConfigError

T = TypeVar("T")


def closest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The choice that looks most like `name` (a likely typo), or None."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


# Other names the literature and other libraries use for a registered entry, by registry kind
# (the `kind` that `lookup` is called with): alias -> (registry name, the parameters it implies).
# Only names for the same computation: where a library draws differently, the note in
# docs/configuration.md's alias table says so. Keys are in normal form (`normal_form`).
ALIASES: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "init": {
        "he": ("kaiming", {}),  # He et al. 2015
        "msra": ("kaiming", {}),  # Caffe's MSRAFiller: N(0, 2/fan_in)
        "kaiming_normal": ("kaiming", {"distribution": "normal"}),  # torch.nn.init
        "kaiming_uniform": ("kaiming", {"distribution": "uniform"}),
        "he_normal": ("kaiming", {"distribution": "normal"}),  # Keras
        "he_uniform": ("kaiming", {"distribution": "uniform"}),
        "glorot": ("xavier", {}),  # Glorot & Bengio 2010
        "xavier_normal": ("xavier", {"distribution": "normal"}),  # torch.nn.init
        "xavier_uniform": ("xavier", {"distribution": "uniform"}),
        "glorot_normal": ("xavier", {"distribution": "normal"}),  # Keras
        "glorot_uniform": ("xavier", {"distribution": "uniform"}),
        "lecun_normal": ("lecun", {"distribution": "normal"}),  # Keras
        "lecun_uniform": ("lecun", {"distribution": "uniform"}),
        "random_normal": ("normal", {}),  # Keras RandomNormal: the same default std 0.05
        "random_uniform": ("uniform", {}),  # Keras RandomUniform: the same default ±0.05
        "truncated_normal": ("trunc_normal", {}),
        "zero": ("zeros", {}),
        "skipinit": ("rezero", {}),  # De & Smith 2020: the branch's scalar multiplier starts at 0
    },
    "activation": {
        "swish": ("silu", {}),  # Ramachandran et al. 2017, β = 1
        "logistic": ("sigmoid", {}),  # scikit-learn's MLP
        "linear": ("identity", {}),  # Keras; torch.nn.init.calculate_gain('linear')
        "none": ("identity", {}),  # Keras' activation=None
        "leakyrelu": ("leaky_relu", {}),  # torch.nn.LeakyReLU typed as one word
        "lrelu": ("leaky_relu", {}),
        "generalrelu": ("general_relu", {}),  # fastai's GeneralRelu
        "gelu_tanh": ("gelu", {"approximate": "tanh"}),  # Hendrycks & Gimpel's tanh approximation
    },
    "bias init": {
        "zero": ("zeros", {}),
    },
}


def normal_form(name: str) -> str:
    """How names are compared: case-insensitive, '-' and ' ' as '_' (`Leaky-ReLU` = leaky_relu)."""
    return name.strip().casefold().replace("-", "_").replace(" ", "_")


def resolve(registry: Mapping[str, Any], name: str, kind: str) -> tuple[str, dict[str, Any]]:
    """The registry name that `name` means (any case, or an alias) and the parameters an alias
    implies; a ConfigError that names the closest match and every valid choice otherwise."""
    if isinstance(name, str):
        key = normal_form(name)
        names = {normal_form(entry): entry for entry in registry}
        if key in names:
            return names[key], {}
        aliases = ALIASES.get(kind, {})
        if key in aliases and aliases[key][0] in registry:
            canonical, params = aliases[key]
            return canonical, dict(params)
        known = {**names, **{alias: target for alias, (target, _) in aliases.items()}}
        guess = closest(key, known)
        hint = ("" if guess is None else f" (did you mean '{guess}'?)" if known[guess] == guess
                else f" (did you mean '{guess}', i.e. {known[guess]}?)")
    else:
        hint = ""
    choices = ", ".join(registry)
    raise ConfigError(f"unknown {kind} '{name}'{hint}; choose from: {choices}")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """The factory `name` means (any case, or an alias: see `resolve`); a ConfigError that names
    the closest match and every valid choice otherwise."""
    return registry[resolve(registry, name, kind)[0]]


def entry(registry: Mapping[str, T], name: str, kind: str,
          params: Mapping[str, Any] | None = None) -> tuple[str, T, dict[str, Any]]:
    """(registry name, factory, `params` on top of what an alias implies) for what `name` means.
    Giving an implied parameter another value is an error: `he_uniform` with distribution:
    normal would mean two things."""
    canonical, implied = resolve(registry, name, kind)
    params = dict(params or {})
    for key, value in implied.items():
        if key in params and params[key] != value:
            raise ConfigError(f"'{name}' means {canonical} with {key}={value!r}; drop {key} or "
                              f"write {canonical}")
    return canonical, registry[canonical], {**implied, **params}


@functools.cache
def parameters_model(factory: Callable[..., Any]) -> type[BaseModel]:
    """A strict pydantic model of a factory's keyword-only parameters (their types and defaults).

    A registry entry declares its parameters once, in its signature; configs are validated
    against that signature, so what a factory accepts and what configs may say cannot drift apart.
    """
    hints = typing.get_type_hints(factory, include_extras=True)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            fields[parameter.name] = (hints[parameter.name], parameter.default)
    config = ConfigDict(extra="forbid", strict=True, frozen=True)
    return create_model(f"{factory.__name__}_parameters", __config__=config, **fields)


def label(name: str, params: Mapping[str, Any], factory: Callable[..., Any]) -> str:
    """`kaiming(mode='fan_out')`: a registry name with the parameters that differ from defaults."""
    fields = parameters_model(factory).model_fields
    changed = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}" if isinstance(v, float)
               else f"{k}={v}" for k, v in params.items() if k in fields and fields[k].default != v]
    return f"{name}({', '.join(changed)})" if changed else name


_LABEL = re.compile(r"^\s*(?P<name>[^\s(\[]+)\s*(?:\((?P<params>.*)\))?\s*"
                    r"(?:\[bias\s+(?P<bias>[^\]]*)\])?\s*$", re.DOTALL)


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """`text` split at `separator`s outside brackets and quotes: `kaiming(mode=fan_out, gain=2),
    xavier` -> ["kaiming(mode=fan_out, gain=2)", "xavier"]."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def label_value(text: str) -> Any:
    """One parameter's value as a label prints it (`'fan_out'`, `0.5`, `1e-05`, `True`, `None`)
    or as YAML writes it (`fan_out`, `true`)."""
    import yaml

    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def parse_label(text: str) -> str | dict[str, Any]:
    """A scheme part as a table prints it, back to a config entry: `relu` -> "relu",
    `general_relu(subtract=0.5)` -> {"name": "general_relu", "subtract": 0.5},
    `kaiming [bias constant(value=0.1)]` -> {"name": "kaiming", "bias": {...}}. The entry is
    then validated as YAML's is; a label that cannot be read is a ConfigError."""
    if "(" not in text and "[" not in text and ")" not in text and "]" not in text:
        return text
    match = _LABEL.match(text)
    if match is None:
        raise ConfigError(f"'{text}' is not a name with parameters, such as "
                          "general_relu(subtract=0.5)")
    entry: dict[str, Any] = {"name": match["name"]}
    params = match["params"] or ""
    for part in split_top_level(params):
        if not part.strip():
            if params.strip():
                raise ConfigError(f"'{text}': empty parameter (parameters are separated by "
                                  "single commas)")
            continue
        key, equals, value = part.partition("=")
        if not equals or not key.strip().isidentifier():
            raise ConfigError(f"'{text}': write each parameter as key=value, as in "
                              f"{match['name']}({part.strip() or 'key'}=...)")
        if key.strip() in ("name", "bias"):
            raise ConfigError(f"'{text}': '{key.strip()}' is not a parameter")
        entry[key.strip()] = label_value(value)
    if match["bias"] is not None:
        entry["bias"] = parse_label(match["bias"].strip())
    return entry if len(entry) > 1 else entry["name"]
