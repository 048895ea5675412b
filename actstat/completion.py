"""Shell completion of option values: names (with their parameters' syntax), choices, flags,
metrics. Torch-free, so a TAB answers at once: the registries' names and parameters are spelled
out here, and tests/test_completion.py keeps them equal to the registries themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from actstat.records import FLAGS, WIDTH_FLAGS

# registry name -> its parameters, in signature order (actstat/inits.py, actstat/activations.py)
INIT_PARAMETERS: dict[str, tuple[str, ...]] = {
    "randn": (), "zeros": (), "constant": ("value",), "uniform": ("low", "high"),
    "normal": ("std", "mean"), "lecun": ("distribution",), "xavier": ("distribution", "gain"),
    "kaiming": ("distribution", "mode", "gain"), "orthogonal": ("gain",), "default": (),
    "trunc_normal": ("std", "cutoff"), "fixup": (), "rezero": (), "gpt2": ("std",),
    "bert": ("std",), "lsuv": ("tolerance", "max_iterations"),
    "keep": (),  # a --model's own init (actstat/config.py's KEEP)
}
ACTIVATION_PARAMETERS: dict[str, tuple[str, ...]] = {
    "relu": (), "leaky_relu": ("negative_slope",), "general_relu": ("leak", "subtract", "clamp_max"),
    "tanh": (), "sigmoid": (), "gelu": ("approximate",), "silu": (), "selu": (), "elu": ("alpha",),
    "softplus": ("beta",), "mish": (), "identity": (),
}
NORMS = ("none", "batchnorm", "layernorm", "rmsnorm")
BLOCKS = ("plain", "residual")
NORM_POSITIONS = ("pre", "post")
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1")
DTYPES = ("float32", "float64", "float16", "bfloat16")
DATA_SOURCES = ("mnist", "gaussian", "tokens")
DATA_SUFFIXES = (".npy", ".npz", ".pt")
OPTIMIZERS = ("sgd", "adam")
PARAMETRISATIONS = ("sp", "mup")  # coord-check --param
WIDTHS = (64, 128, 256, 512, 1024)  # coord-check's default --widths (actstat/config.py)
RAY_ADDRESSES = ("local",)
SORTS = ("verdict", "gain", "name")
METRICS = ("pre_std", "post_std", "grad_std", "pre_mean", "post_mean", "grad_mean", "loss",
           "train_std", "train_mean", "train_grad_std", "train_near_zero", "train_dead")
FORMATS = ("table", "json", "csv", "markdown")
CHECK_FORMATS = ("table", "json", "markdown")
TRAIN_FORMATS = ("table", "json")

Completer = Callable[[str], list[tuple[str, str]]]


def _listed(incomplete: str, choices: dict[str, str]) -> list[tuple[str, str]]:
    """Completions of the last item of a comma-separated list (`relu,ta` -> `relu,tanh`)."""
    from actstat.registry import split_top_level

    *done, last = split_top_level(incomplete)
    head = ",".join(done) + ("," if done else "")
    return [(head + name, about) for name, about in choices.items() if name.startswith(last)]


def _labelled(parameters: dict[str, tuple[str, ...]]) -> Completer:
    """Names, then inside `name(` the parameters as `key=` (`general_relu(sub` ->
    `general_relu(subtract=`)."""

    def complete(incomplete: str) -> list[tuple[str, str]]:
        from actstat.registry import split_top_level

        last = split_top_level(incomplete)[-1]
        if "(" in last and not last.rstrip().endswith(")"):
            name, _, inside = last.partition("(")
            given = inside.rsplit(",", 1)
            typed = given[-1].lstrip()
            start = incomplete[:len(incomplete) - len(typed)]
            keys = parameters.get(name.strip(), ())
            return [(f"{start}{key}=", f"a parameter of {name.strip()}") for key in keys
                    if key.startswith(typed) and "=" not in typed]
        return _listed(incomplete, {
            name: f"parameters: {name}({', '.join(f'{key}=...' for key in keys)})" if keys
            else "" for name, keys in parameters.items()})

    return complete


def _choices(values: Iterable[str], listed: bool = False) -> Completer:
    values = tuple(values)

    def complete(incomplete: str) -> list[tuple[str, str]]:
        if listed:
            return _listed(incomplete, dict.fromkeys(values, ""))
        return [(value, "") for value in values if value.startswith(incomplete)]

    return complete


def data_sources(incomplete: str) -> list[tuple[str, str]]:
    """The named sources, and the files and directories a path could be."""
    named = [(name, "data source") for name in DATA_SOURCES if name.startswith(incomplete)]
    folder, _, stem = incomplete.rpartition("/")
    base = Path(folder or ".").expanduser()
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return named
    paths = [(f"{folder}/" if folder else "") + entry.name + ("/" if entry.is_dir() else "")
             for entry in entries if entry.name.startswith(stem) and not entry.name.startswith(".")
             and (entry.is_dir() or entry.suffix in DATA_SUFFIXES)]
    return named + [(path, "") for path in paths]


def widths(incomplete: str) -> list[tuple[str, str]]:
    """coord-check's --widths: the default list, or after `64,128,` the next doubling."""
    if not incomplete:
        return [(",".join(map(str, WIDTHS)), "the default widths")]
    *done, last = incomplete.split(",")
    if done and not last and done[-1].isdigit():
        return [(f"{incomplete}{2 * int(done[-1])}", "twice the last width")]
    return []


inits = _labelled(INIT_PARAMETERS)
activations = _labelled(ACTIVATION_PARAMETERS)
norms = _choices(NORMS)
blocks = _choices(BLOCKS)
norm_positions = _choices(NORM_POSITIONS)
devices = _choices(DEVICES)
dtypes = _choices(DTYPES)
optimizers = _choices(OPTIMIZERS)
sorts = _choices(SORTS)
formats = _choices(FORMATS)
check_formats = _choices(CHECK_FORMATS)
train_formats = _choices(TRAIN_FORMATS)
parametrisations = _choices(PARAMETRISATIONS)
ray_addresses = _choices(RAY_ADDRESSES)
fail_on_flags = _choices((*FLAGS, "any"), listed=True)
width_fail_on_flags = _choices((*WIDTH_FLAGS, "any"), listed=True)
metrics = _choices(METRICS, listed=True)
