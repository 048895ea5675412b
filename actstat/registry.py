"""Name -> factory registries: one lookup with a helpful error, and parameter validation."""

from __future__ import annotations

import difflib
import functools
import inspect
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


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """`registry[name]`, or a ConfigError that names the closest match and every valid choice."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        guess = closest(str(name), registry)
        hint = f" (did you mean '{guess}'?)" if guess else ""
        choices = ", ".join(registry)
        raise ConfigError(f"unknown {kind} '{name}'{hint}; choose from: {choices}") from None


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
