"""Pipeline: a Config -> a Report, through data, model, probe and analysis, one scheme at a time."""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import torch

from actstat import __version__
from actstat.activations import ACTIVATIONS, make_activation
from actstat.analysis import analyse, verdict
from actstat.config import ActivationSpec, Config, InitSpec
from actstat.data import Batch, load_batch, resolve_device, resolve_dtype
from actstat.inits import BIAS_INITS, INITS, make_bias_init, make_init
from actstat.model import build_mlp, initialise
from actstat.probe import measure, moments
from actstat.registry import label
from actstat.report import SCHEMA_VERSION, InputStats, Report, Run, finite_or_none
from actstat.train import train_probe


def schemes(config: Config) -> list[tuple[InitSpec, ActivationSpec]]:
    """Every (init, activation) of the grid, inits outer, in config order; then the compare list."""
    grid = list(product(config.init, config.activation))
    return grid + [(scheme.init, scheme.activation) for scheme in config.compare]


# called after each scheme with (schemes done, schemes in all, the scheme's label)
Progress = Callable[[int, int, str], None]


def profile(config: Config, on_scheme: Progress | None = None) -> Report:
    """Load the batch once, then build, initialise and measure one model per scheme."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    batch = load_batch(config.data, seed=config.seed, device=device, dtype=dtype,
                       num_classes=config.model.num_classes)
    with torch.inference_mode():  # the batch's own moments, fetched once
        inputs = torch.stack(moments(batch.inputs, 0.0)[:2]).tolist()
    todo = schemes(config)
    runs = []
    for done, (init, act) in enumerate(todo, start=1):
        runs.append(profile_scheme(config, init, act, batch, input_std=inputs[1]))
        if on_scheme is not None:
            on_scheme(done, len(todo), runs[-1].scheme)
    return Report(
        schema_version=SCHEMA_VERSION,
        actstat_version=__version__,
        torch_version=torch.__version__,
        device=str(device),
        config=config.model_dump(mode="json"),
        input=InputStats(
            source=batch.description,
            batch_size=batch.inputs.shape[0],
            features=batch.inputs.shape[1],
            labelled=batch.labelled,
            mean=finite_or_none(inputs[0]),
            std=finite_or_none(inputs[1]),
        ),
        runs=tuple(runs),
    )


def profile_scheme(config: Config, init: InitSpec, act: ActivationSpec, batch: Batch, *,
                   input_std: float) -> Run:
    activation = make_activation(act.name, act.params)
    model = build_mlp(
        in_features=batch.inputs.shape[1],
        widths=config.model.widths,
        num_classes=config.model.num_classes,
        bias=config.model.bias,
        activation=activation,
    )
    model = initialise(
        model,
        make_init(init.name, init.params),
        make_bias_init(init.bias.name, init.bias.params),
        act_gain=activation.gain,
        seed=config.seed,
        device=batch.inputs.device,
        dtype=batch.inputs.dtype,
    )
    t = config.thresholds
    measurement = measure(model, batch.inputs, batch.labels if config.grad else None,
                          activation=activation, near_zero=t.near_zero,
                          saturation_cut=t.saturation_cut)
    layers = analyse(measurement.layers, input_std=input_std, thresholds=t,
                     can_die=activation.dead_below is not None,
                     bounded=activation.saturation_edges(t.saturation_cut) is not None)
    init_params = {**init.params, "bias": init.bias.model_dump()}
    train = None
    if config.train.steps:
        train = train_probe(model, batch.inputs, batch.labels, steps=config.train.steps,
                            lr=config.train.lr, symmetric=t.symmetric)
    return Run(scheme_label(init, act), init.name, init_params, act.name, dict(act.params),
               verdict(layers), finite_or_none(measurement.loss), layers, train)


def scheme_label(init: InitSpec, act: ActivationSpec) -> str:
    """`kaiming(mode='fan_out') + relu`: names with every non-default parameter."""
    init_label = label(init.name, init.params, INITS[init.name])
    if init.bias.name != "zeros":
        bias = label(init.bias.name, init.bias.params, BIAS_INITS[init.bias.name])
        init_label += f" [bias {bias}]"
    return f"{init_label} + {label(act.name, act.params, ACTIVATIONS[act.name])}"
