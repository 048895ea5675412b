"""The command line's options, declared once: their `--help`, the run options every measuring
command shares, and how an option's text becomes a config override.

Torch-free (Typer renders `--help` from these names alone) and silent: a value that cannot be
read raises `ConfigError`, which the CLI prints as one line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from actstat import completion as complete  # torch-free: a TAB answers at once
from actstat.errors import ConfigError
from actstat.records import FLAGS as FLAG_NAMES  # torch-free, like everything imported here
from actstat.records import WIDTH_FLAGS

ConfigArg = Annotated[Path | None, typer.Argument(
    metavar="CONFIG",
    help="YAML config file (default: the built-in defaults, as configs/default.yaml).",
    show_default=False, dir_okay=False)]
# a repeated --init/--act adds to the list: `-i kaiming -i xavier` is `-i kaiming,xavier`
InitOpt = Annotated[list[str] | None, typer.Option(
    "--init", "-i", metavar="NAME[,NAME...]", show_default=False,
    autocompletion=complete.inits,
    rich_help_panel="Model",
    help="Init name(s), comma-separated or repeated, or as tables print them: "
    "'kaiming(mode=fan_out)' (default kaiming).")]
ActOpt = Annotated[list[str] | None, typer.Option(
    "--act", "-a", metavar="NAME[,NAME...]", show_default=False,
    autocompletion=complete.activations,
    rich_help_panel="Model",
    help="Activation(s), comma-separated or repeated, or as tables print them: "
    "'general_relu(subtract=0.5)' (default relu).")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", metavar="FILE.py:FN", show_default=False, rich_help_panel="Model",
    help="Your own model: a factory (nets.py:make_cnn, mypkg.nets:make) or a Hugging Face "
    "model by name, built offline from its config (hf:gpt2, hf:bert, hf:vit).")]
# repeated: `--model-arg n_layer=4 --model-arg n_embd=64`
ModelArgOpt = Annotated[list[str] | None, typer.Option(
    "--model-arg", metavar="KEY=VALUE", show_default=False, rich_help_panel="Model",
    help="A keyword argument of the factory or Hugging Face config, read as YAML (repeat for "
    "more): n_layer=4.")]
LayersOpt = Annotated[str | None, typer.Option(
    "--layers", metavar="NAME[,NAME...]", show_default=False, rich_help_panel="Model",
    help="With --model: measure only these modules, by class (Conv2d) or name (blocks.*).")]
DepthOpt = Annotated[str | None, typer.Option(
    "--depth", "-d", metavar="INT", help="Hidden Linear+activation blocks (default 20).",
    show_default=False, rich_help_panel="Model")]
WidthOpt = Annotated[str | None, typer.Option(
    "--width", "-w", metavar="INT[,INT...]", help="Hidden width, or one per layer (default 100).",
    show_default=False, rich_help_panel="Model")]
BlockOpt = Annotated[str | None, typer.Option(
    "--block", metavar="KIND", help="plain (default) or residual (x + branch(x)).",
    autocompletion=complete.blocks,
    show_default=False, rich_help_panel="Model")]
BranchDepthOpt = Annotated[str | None, typer.Option(
    "--branch-depth", metavar="INT", show_default=False, rich_help_panel="Model",
    help="Layers per residual branch (default 2).")]
NormOpt = Annotated[str | None, typer.Option(
    "--norm", metavar="NAME", help="none (default), batchnorm, layernorm or rmsnorm.",
    autocompletion=complete.norms,
    show_default=False, rich_help_panel="Model")]
NormPositionOpt = Annotated[str | None, typer.Option(
    "--norm-position", metavar="WHERE", show_default=False, rich_help_panel="Model",
    autocompletion=complete.norm_positions,
    help="pre (default: before each branch or activation) or post (after the add).")]
MultiplierOpt = Annotated[str | None, typer.Option(
    "--multiplier", metavar="FLOAT", show_default=False, rich_help_panel="Model",
    help="Residual: each branch's learnable scalar α starts here (0: ReZero).")]
BatchOpt = Annotated[str | None, typer.Option(
    "--batch-size", "-b", metavar="INT", help="Samples in the batch (default 1000).",
    show_default=False, rich_help_panel="Data")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", metavar="SOURCE", show_default=False, rich_help_panel="Data",
    autocompletion=complete.data_sources,
    help="mnist (default, bundled), gaussian, tokens (ids, for a --model with an Embedding), "
    "or a .npy, .npz or .pt file or MNIST IDX directory.")]
VocabOpt = Annotated[str | None, typer.Option(
    "--vocab", metavar="INT", show_default=False, rich_help_panel="Data",
    help="--data tokens: ids drawn from \\[0, INT) (default: the hf: model's vocabulary, else "
    "1000).")]
LengthOpt = Annotated[str | None, typer.Option(
    "--length", metavar="INT", show_default=False, rich_help_panel="Data",
    help="--data tokens: ids per sample (default: 128 or the hf: model's context, else 32).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", metavar="DEVICE", show_default=False, rich_help_panel="Data",
    autocompletion=complete.devices,
    help="auto (default: cuda if available), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", metavar="DTYPE", help="float32 (default), float64, float16 or bfloat16.",
    autocompletion=complete.dtypes,
    show_default=False, rich_help_panel="Data")]
SeedOpt = Annotated[str | None, typer.Option(
    "--seed", "-s", metavar="INT", help="Seed of the batch and the weights (default 0).",
    show_default=False, rich_help_panel="Data")]
BiasOpt = Annotated[bool | None, typer.Option(
    "--bias/--no-bias", help="Linear layers with bias (default) or without.",
    show_default=False, rich_help_panel="Model")]
GradOpt = Annotated[bool | None, typer.Option(
    "--grad/--no-grad", show_default=False, rich_help_panel="Measure",
    help="One backward pass too (default), or the forward pass alone.")]
TheoryOpt = Annotated[bool | None, typer.Option(
    "--theory/--no-theory", show_default=False, rich_help_panel="Measure",
    help="The mean-field expected std and phase beside the measurement (default on).")]

# The run options of every command that measures (run, compare, baseline, check, train), in
# their --help order: `run_options` puts them in a command's signature, `overrides` reads them
# back. A new one is a line here and a line in OVERRIDES.
RUN_OPTIONS: dict[str, Any] = {
    "init": InitOpt, "act": ActOpt, "model": ModelOpt, "model_arg": ModelArgOpt,
    "layers": LayersOpt, "depth": DepthOpt, "width": WidthOpt, "block": BlockOpt,
    "branch_depth": BranchDepthOpt, "norm": NormOpt, "norm_position": NormPositionOpt,
    "multiplier": MultiplierOpt, "batch_size": BatchOpt, "data": DataOpt, "vocab": VocabOpt,
    "length": LengthOpt, "device": DeviceOpt, "dtype": DtypeOpt, "seed": SeedOpt, "bias": BiasOpt,
    "grad": GradOpt, "theory": TheoryOpt,
}

HistOpt = Annotated[bool | None, typer.Option(
    "--hist", show_default=False, rich_help_panel="Measure",
    help="Every layer's post-activation histogram, as a heat map over depth.")]
PlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Also draw a figure (.png, .svg or .pdf; needs actstat\\[plot]); implies --hist.",
    show_default=False, dir_okay=False, metavar="FILE", rich_help_panel="Output")]
StepsOpt = Annotated[str | None, typer.Option(
    "--steps", metavar="INT", show_default=False, rich_help_panel="Measure",
    help="Then train with SGD this many steps; report how the weights moved.")]
LrOpt = Annotated[str | None, typer.Option(
    "--lr", metavar="FLOAT", help="Learning rate of --steps (default 0.1).", show_default=False,
    rich_help_panel="Measure")]
FormatOpt = Annotated[str, typer.Option(
    "--format", "-f", metavar="FORMAT", help="table, json, csv or markdown.",
    autocompletion=complete.formats,
    rich_help_panel="Output")]
TrainFormatOpt = Annotated[str, typer.Option(
    "--format", "-f", metavar="FORMAT", help="table or json.", rich_help_panel="Output",
    autocompletion=complete.train_formats)]
TensorBoardOpt = Annotated[Path | None, typer.Option(
    "--tensorboard", metavar="DIR", show_default=False, file_okay=False, rich_help_panel="Output",
    help="Also write each recorded step as TensorBoard events, a run per scheme under DIR "
         "(needs actstat\\[tensorboard]).")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Write to this file (atomically) instead of stdout.",
    show_default=False, dir_okay=False, metavar="FILE", rich_help_panel="Output")]
FailOnOpt = Annotated[str | None, typer.Option(
    "--fail-on", metavar="FLAG[,FLAG...]", show_default=False, rich_help_panel="CI",
    autocompletion=complete.fail_on_flags,
    help="Exit 1 if any layer carries one of these flags (or 'any'): " + ", ".join(FLAG_NAMES))]
ForceOpt = Annotated[bool, typer.Option(
    "--force", rich_help_panel="Measure", help="Run even if the memory pre-flight says it will not fit.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel="Output", help="No messages on stderr (errors still appear).")]
WideOpt = Annotated[bool, typer.Option(
    "--wide", rich_help_panel="Output",
    help="Tables at full width, however narrow the terminal (lines wrap); by default "
    "columns leave so that every number shows whole.")]
NoColorOpt = Annotated[bool, typer.Option(
    "--no-color", rich_help_panel="Output", help="No colour (as the NO_COLOR environment variable).")]

# compare
SortOpt = Annotated[str, typer.Option(
    "--sort", metavar="ORDER", rich_help_panel="Output",
    autocompletion=complete.sorts,
    help="verdict (healthy first), gain (closest to 1 first) or name.")]
DetailOpt = Annotated[bool, typer.Option(
    "--detail", rich_help_panel="Output", help="Also print every scheme's per-layer table.")]

# baseline
BaselineOutOpt = Annotated[Path, typer.Option(
    "--output", "-o", help="Where to write the baseline (atomically).", dir_okay=False,
    metavar="FILE", rich_help_panel="Output")]

# check
TargetArg = Annotated[Path | None, typer.Argument(
    metavar="TARGET",
    help="A baseline (.json report), or a YAML config for --max-drift / --fail-on alone.",
    show_default=False, dir_okay=False)]
CheckConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="Run this config, not the baseline's config file (differences shown).",
    show_default=False, dir_okay=False, metavar="FILE", rich_help_panel="CI")]
RtolOpt = Annotated[str | None, typer.Option(
    "--rtol", metavar="FLOAT", show_default=False, rich_help_panel="CI",
    help="Std metrics: |ln(obtained/expected)| <= ln(1 + rtol). Default 0.05.")]
AtolOpt = Annotated[str | None, typer.Option(
    "--atol", metavar="FLOAT", show_default=False, rich_help_panel="CI",
    help="Mean metrics: |difference| <= atol x the expected std. Default 0.05.")]
MetricsOpt = Annotated[str | None, typer.Option(
    "--metrics", metavar="NAME[,NAME...]", show_default=False, rich_help_panel="CI",
    autocompletion=complete.metrics,
    help="pre_std, post_std, grad_std, pre_mean, post_mean, grad_mean; through training: "
    "loss, train_std, train_mean, train_grad_std, train_near_zero, train_dead (default: all).")]
MaxDriftOpt = Annotated[str | None, typer.Option(
    "--max-drift", metavar="F", show_default=False, rich_help_panel="CI",
    help="Fail when a layer's post std leaves \\[s/F, s*F], s = the first hidden layer's.")]
StoredConfigOpt = Annotated[bool, typer.Option(
    "--stored-config", rich_help_panel="CI",
    help="Re-run the config stored in the baseline, not its config file "
    "(catches library and torch drift alone).")]
UpdateOpt = Annotated[bool, typer.Option(
    "--update", rich_help_panel="CI",
    help="Rewrite the baseline with the new values (after showing what changed).")]
CheckFormatOpt = Annotated[str, typer.Option(
    "--format", "-f", metavar="FORMAT", help="table, json or markdown (CI summary page).",
    autocompletion=complete.check_formats,
    rich_help_panel="Output")]
JunitOpt = Annotated[Path | None, typer.Option(
    "--junit-xml", help="Also write a JUnit XML report here.", show_default=False,
    dir_okay=False, metavar="FILE", rich_help_panel="Output")]

# plot
ReportArg = Annotated[Path, typer.Argument(
    metavar="REPORT", dir_okay=False,
    help="A JSON report written by run, compare, baseline, train or coord-check.")]
FigureOpt = Annotated[Path, typer.Option(
    "--output", "-o", help="The figure: .png, .svg or .pdf.", dir_okay=False, metavar="FILE",
    rich_help_panel="Output")]

# train
TrainStepsOpt = Annotated[str | None, typer.Option(
    "--steps", metavar="INT", show_default=False, rich_help_panel="Training",
    help="Training steps (default: train.steps of the config, or 200).")]
EveryOpt = Annotated[str | None, typer.Option(
    "--every", metavar="INT", show_default=False, rich_help_panel="Training",
    help="Record the statistics every this many steps, and the last (default 10).")]
TrainLrOpt = Annotated[str | None, typer.Option(
    "--lr", metavar="FLOAT", show_default=False, rich_help_panel="Training",
    help="Learning rate (default: sgd 0.1, adam 0.001).")]
OptimizerOpt = Annotated[str | None, typer.Option(
    "--optimizer", metavar="NAME", show_default=False, rich_help_panel="Training",
    autocompletion=complete.optimizers,
    help="sgd (default) or adam.")]
MomentumOpt = Annotated[str | None, typer.Option(
    "--momentum", metavar="FLOAT", show_default=False, rich_help_panel="Training",
    help="SGD momentum (default 0) or Adam's beta1 (default 0.9).")]
WarmupOpt = Annotated[str | None, typer.Option(
    "--warmup", metavar="INT", show_default=False, rich_help_panel="Training",
    help="Steps of linear learning-rate warm-up (default 0).")]
TrainBatchOpt = Annotated[str | None, typer.Option(
    "--train-batch", metavar="INT", show_default=False, rich_help_panel="Training",
    help="Mini-batch size, drawn from all of the data source's samples (default 64).")]
HeatOpt = Annotated[str | None, typer.Option(
    "--heatmap", metavar="LAYER[,LAYER...]", show_default=False, rich_help_panel="Output",
    help="With --hist: the layers to draw the colorful dimension of (default: first and last).")]


# coord-check (their parameter names are their own: --steps, --lr and --optimizer set
# coord_check's keys here, train's elsewhere); panels: Model, Data, Widths, Training, Output, CI
CoordDepthOpt = Annotated[str | None, typer.Option(
    "--depth", "-d", metavar="INT", show_default=False, rich_help_panel="Model",
    help="Hidden Linear+activation blocks (default 2 in a coord check).")]
WidthsOpt = Annotated[str | None, typer.Option(
    "--widths", metavar="INT,INT,INT[,...]", show_default=False, rich_help_panel="Widths",
    autocompletion=complete.widths,
    help="The widths to train copies at, at least three (default 64,128,256,512,1024).")]
SeedsOpt = Annotated[str | None, typer.Option(
    "--seeds", metavar="INT", show_default=False, rich_help_panel="Widths",
    help="Copies per width, seeds --seed, --seed + 1, ... (default 3).")]
ParamOpt = Annotated[str | None, typer.Option(
    "--param", metavar="NAME", show_default=False, rich_help_panel="Widths",
    autocompletion=complete.parametrisations,
    help="sp (PyTorch's standard parameterisation, default) or mup (Tensor Programs V's μP: "
    "init, readout multiplier and per-layer learning rates by width).")]
BaseWidthOpt = Annotated[str | None, typer.Option(
    "--base-width", metavar="INT", show_default=False, rich_help_panel="Widths",
    help="μP's base width, where it equals SP (default: the smallest width).")]
WidthArgOpt = Annotated[str | None, typer.Option(
    "--width-arg", metavar="NAME", show_default=False, rich_help_panel="Widths",
    help="With --model: the factory's keyword argument that sets the width (d_model).")]
CoordStepsOpt = Annotated[str | None, typer.Option(
    "--steps", metavar="INT", show_default=False, rich_help_panel="Training",
    help="Updates to train; every layer is measured at init and after each (default 4).")]
CoordOptimizerOpt = Annotated[str | None, typer.Option(
    "--optimizer", metavar="NAME", show_default=False, rich_help_panel="Training",
    autocompletion=complete.optimizers,
    help="adam (default) or sgd.")]
CoordLrOpt = Annotated[str | None, typer.Option(
    "--lr", metavar="FLOAT", show_default=False, rich_help_panel="Training",
    help="The base learning rate (default 0.01; μP scales it per layer).")]
CoordBatchOpt = Annotated[str | None, typer.Option(
    "--train-batch", metavar="INT", show_default=False, rich_help_panel="Training",
    help="Mini-batch size, drawn from all of the data source's samples (default 256).")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="ADDRESS", show_default=False, rich_help_panel="Training",
    autocompletion=complete.ray_addresses,
    help="Run each width as a Ray task: 'local' (a local instance) or a cluster's address "
    "(needs actstat\\[ray]).")]
CoordPlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Also draw the coordinate-check figure (.png, .svg or .pdf; needs "
    "actstat\\[plot]): a panel per step, a line per layer.", show_default=False,
    dir_okay=False, metavar="FILE", rich_help_panel="Output")]
SlopeOpt = Annotated[str | None, typer.Option(
    "--max-slope", metavar="FLOAT", show_default=False, rich_help_panel="CI",
    help="Flag a layer whose slope goes past this, up or down (default 0.3).")]
WidthFailOnOpt = Annotated[str | None, typer.Option(
    "--fail-on", metavar="FLAG[,FLAG...]", show_default=False, rich_help_panel="CI",
    autocompletion=complete.width_fail_on_flags,
    help="Exit 1 if any layer carries one of these flags (or 'any'): "
    + ", ".join(WIDTH_FLAGS))]


def names(option: str, value: str) -> list[str]:
    """`kaiming,lecun` -> ["kaiming", "lecun"]; an empty list or an empty name is an error."""
    listed = [name.strip() for name in value.split(",")]
    if not any(listed):
        raise ConfigError(f"{option}: give at least one name (got '{value}')")
    if not all(listed):
        raise ConfigError(f"{option}: empty name in '{value}' (names are separated by single "
                          "commas)")
    return listed


def scalar(text: str) -> Any:
    """A command-line value read as YAML reads a scalar: "20" -> 20, "0.5" -> 0.5, "x" -> "x"."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) else text


def _given(option: str, value: Any) -> Any:
    return value


def _number(option: str, value: str) -> Any:
    return scalar(value)


def _widths(option: str, value: str) -> Any:
    widths = [scalar(width) for width in names(option, value)]
    return widths[0] if len(widths) == 1 else widths


def _width_list(option: str, value: str) -> Any:
    return [scalar(width) for width in names(option, value)]


def _labels(option: str, values: list[str]) -> list[Any]:
    """--init/--act: names, or labels as a table prints them (`general_relu(subtract=0.5)`,
    read back to `{name: general_relu, subtract: 0.5}`), comma-separated or repeated."""
    from actstat.registry import parse_label, split_top_level

    chosen = []
    for given in values:
        listed = [name.strip() for name in split_top_level(given)]
        if not all(listed):
            names(option, given)  # raises: no name, or an empty one
        try:
            chosen += [parse_label(name) for name in listed]
        except ConfigError as err:
            raise ConfigError(f"{option}: {err}") from None
    return chosen


def _keywords(option: str, values: list[str]) -> dict[str, Any]:
    """`["n_layer=4", "scale=0.5", "tied=true", "act=gelu", "depths=[1, 1]"]` -> {"n_layer": 4,
    "scale": 0.5, "tied": True, "act": "gelu", "depths": [1, 1]}: each value read as YAML
    reads it (a number, true/false, null, a [list] or {mapping}, else text); a later KEY wins."""
    given: dict[str, Any] = {}
    for text in values:
        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"{option}: write KEY=VALUE, such as n_layer=4 (got {text!r})")
        if not key.isidentifier():
            raise ConfigError(f"{option}: '{key}' is not a keyword argument's name (got {text!r})")
        given[key] = _yaml_value(value.strip())
    return given


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text else text
    except yaml.YAMLError:
        return text


# Every option that sets a config value: its parameter name -> (dotted config key, how its text
# is read), whichever commands have it; in the order they are read (the first bad one is told).
OVERRIDES: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "depth": ("model.depth", _number), "batch_size": ("data.batch_size", _number),
    "seed": ("seed", _number), "data": ("data.source", _given), "device": ("device", _given),
    "dtype": ("dtype", _given), "bias": ("model.bias", _given), "grad": ("grad", _given),
    "theory": ("theory", _given), "hist": ("hist", _given), "steps": ("train.steps", _number),
    "lr": ("train.lr", _number), "width": ("model.width", _widths),
    "init": ("init", _labels), "act": ("activation", _labels),
    "model": ("model.factory", _given), "model_arg": ("model.kwargs", _keywords),
    "vocab": ("data.vocab", _number), "length": ("data.length", _number),
    "block": ("model.block", _given),
    "norm": ("model.norm", _given), "norm_position": ("model.norm_position", _given),
    "multiplier": ("model.multiplier", _number), "branch_depth": ("model.branch_depth", _number),
    "layers": ("model.layers", names),
    # train
    "every": ("train.every", _number), "momentum": ("train.momentum", _number),
    "warmup": ("train.warmup", _number), "train_batch": ("train.batch_size", _number),
    "optimizer": ("train.optimizer", _given),
    # check
    "rtol": ("check.rtol", _number), "atol": ("check.atol", _number),
    "metrics": ("check.metrics", names),
    # coord-check
    "widths": ("coord_check.widths", _width_list), "coord_steps": ("coord_check.steps", _number),
    "seeds": ("coord_check.seeds", _number), "param": ("coord_check.param", _given),
    "base_width": ("coord_check.base_width", _number),
    "width_arg": ("coord_check.width_arg", _given),
    "coord_optimizer": ("coord_check.optimizer", _given),
    "coord_lr": ("coord_check.lr", _number), "coord_batch": ("coord_check.batch_size", _number),
    "max_slope": ("thresholds.width_slope", _number),
}


def overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config keys for every config option a command was given (its `ctx.params`; None
    or an empty repeated option: not given)."""
    chosen: dict[str, Any] = {}
    for name, (key, read) in OVERRIDES.items():
        value = params.get(name)
        if value is not None and not (isinstance(value, (list, tuple)) and not value):
            chosen[key] = read("--" + name.replace("_", "-"), value)
    return chosen


Command = TypeVar("Command", bound=Callable[..., Any])


def run_options(*, without: tuple[str, ...] = (), own: Mapping[str, Any] | None = None
                ) -> Callable[[Command], Command]:
    """Add the shared RUN_OPTIONS (less `without`; `own`: a command's own alias of one, such as
    coord-check's --depth with its default) to a command's parameters, right after its
    `config`. The command itself does not take them: it reads them with `overrides(ctx.params)`."""
    shared = {name: (own or {}).get(name, alias) for name, alias in RUN_OPTIONS.items()
              if name not in without}

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = list(signature.parameters.values())
        after = [param.name for param in own].index("config") + 1
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                   annotation=alias) for name, alias in shared.items()]

        @functools.wraps(command)
        def with_run_options(**given: Any) -> Any:
            return command(**{name: value for name, value in given.items() if name not in shared})

        parameters = [*own[:after], *added, *own[after:]]
        with_run_options.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=parameters)
        with_run_options.__annotations__ = {param.name: param.annotation for param in parameters}
        return with_run_options  # type: ignore[return-value]

    return decorate


def fail_on(value: str | None) -> set[str]:
    """--fail-on's flags ('any': all of them); an unknown one is an error."""
    if value is None:
        return set()
    chosen = names("--fail-on", value)
    if "any" in chosen:
        return set(FLAG_NAMES)
    unknown = [name for name in chosen if name not in FLAG_NAMES]
    if unknown:
        raise ConfigError(f"--fail-on: unknown flag '{unknown[0]}'; choose from: "
                          f"{', '.join(FLAG_NAMES)}, any")
    return set(chosen)


def width_fail_on(value: str | None) -> set[str]:
    """coord-check's --fail-on: its width flags ('any': both)."""
    if value is None:
        return set()
    chosen = names("--fail-on", value)
    if "any" in chosen:
        return set(WIDTH_FLAGS)
    unknown = [name for name in chosen if name not in WIDTH_FLAGS]
    if unknown:
        raise ConfigError(f"--fail-on: unknown flag '{unknown[0]}'; coord-check flags: "
                          f"{', '.join(WIDTH_FLAGS)}, any")
    return set(chosen)


def at_least(option: str, text: str, minimum: float) -> float:
    """A number option that must be ≥ minimum (--max-drift)."""
    value = scalar(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise ConfigError(f"{option}: must be a number ≥ {minimum:g} (got {text!r})")
    return float(value)
