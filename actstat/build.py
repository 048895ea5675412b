"""Build: a scheme's model from a config, initialised: the one place a model is made from a config
(the built-in MLP, plain, normed or residual, or a user's factory), for `run` and `train` alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from actstat.activations import ACTIVATIONS, Activation, make_activation
from actstat.capture import (
    is_weight_layer,
    transposed_linear,
)
from actstat.config import (
    KEEP,
    ActivationSpec,
    Config,
    InitSpec,
)
from actstat.inits import (
    ALL_INITS,
    BIAS_INITS,
    DataInit,
    StructuralInit,
    fans,
    make_bias_init,
    make_init,
)
from actstat.model import (
    build_mlp,
    build_normed_mlp,
    build_residual,
    initialise,
)
from actstat.records import (
    LsuvLayer,
)
from actstat.registry import label


def scheme_label(init: InitSpec, act: ActivationSpec) -> str:
    """`kaiming(mode='fan_out') + relu`: names with every non-default parameter."""
    init_label = label(init.name, init.params, ALL_INITS[init.name])
    if init.bias.name != "zeros":
        bias = label(init.bias.name, init.bias.params, BIAS_INITS[init.bias.name])
        init_label += f" [bias {bias}]"
    return f"{init_label} + {label(act.name, act.params, ACTIVATIONS[act.name])}"


def build_blocks(config: Config, activation: Activation, in_features: int,
                 init: StructuralInit | Callable | None = None) -> torch.nn.Module:
    """The built-in model with residual blocks or norm layers (config.model.block, .norm), not
    yet initialised. An `init` that starts the blocks' multiplier (rezero) gives every block one
    where model.multiplier is unset."""
    m = config.model
    if m.block == "residual":
        multiplier = m.multiplier
        if multiplier is None and isinstance(init, StructuralInit) and init.needs_multiplier:
            multiplier = init.multiplier
        return build_residual(in_features=in_features, width=m.widths[0], depth=m.depth,
                              branch_depth=m.branch_depth, num_classes=m.num_classes,
                              bias=m.bias, activation=activation, norm=m.norm,
                              norm_position=m.norm_position, multiplier=multiplier)
    return build_normed_mlp(in_features=in_features, widths=m.widths,
                            num_classes=m.num_classes, bias=m.bias, activation=activation,
                            norm=m.norm, norm_position=m.norm_position)


def blocks_label(config: Config) -> str:
    """What a run of `build_blocks`'s model names as its model: `residual ×8 (branch 2) +
    layernorm (pre)`."""
    m = config.model
    text = (f"residual ×{m.depth} (branch {m.branch_depth})" if m.block == "residual"
            else f"MLP ×{m.depth}")
    if m.multiplier is not None:
        text += f" α={m.multiplier:g}"
    return text + (f" + {m.norm} ({m.norm_position})" if m.norm != "none" else "")


# the gain an init's `gain: auto` takes in a user's model, whose activations are its own: ReLU's
MODEL_ACT_GAIN = math.sqrt(2.0)


def model_label(spec: str, init: InitSpec) -> str:
    """`nets.py:make_cnn + kaiming(mode='fan_out')`; `+ keep` for the model's own init."""
    name = spec.replace("\\", "/").rsplit("/", 1)[-1]
    if init.name == KEEP:
        return f"{name} + {KEEP}"
    return f"{name} + {scheme_label(init, ActivationSpec()).rsplit(' + ', 1)[0]}"


def factory_model(config: Config, init: InitSpec) -> torch.nn.Module:
    """The factory's model, made with torch's CPU generator seeded with `seed` (the caller's
    generator state is restored after), re-initialised by `init` unless it is `keep`."""
    from actstat.sources import build_model

    assert config.model.factory is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model.factory, config.model.kwargs)
    if init.name != KEEP:
        reinitialise(model, make_init(init.name, init.params),
                     make_bias_init(init.bias.name, init.bias.params), seed=config.seed)
    return model


def reinitialise(model: torch.nn.Module, weight_init: Callable, bias_init: Callable, *,
                 seed: int) -> int:
    """Re-draw the weight and bias of every weight layer (capture's `is_weight_layer`: Linear,
    Conv, Embedding, Hugging Face's Conv1D) in module order from one CPU generator seeded with
    `seed`, fans as torch.nn.init computes them; normalisation layers and other parameters keep
    theirs. The number of layers drawn (a weight shared by two layers is drawn twice)."""
    g = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not is_weight_layer(module) or not isinstance(weight, torch.nn.Parameter):
                continue
            # a Conv1D's (in, out) weight seen as (out, in), nn.Linear's layout, so that every
            # init's fan_in and fan_out are the layer's
            layout = weight.T if transposed_linear(module) else weight
            target = (layout if layout.device.type == "cpu" and layout.is_contiguous()
                      else torch.empty(layout.shape, dtype=layout.dtype))
            weight_init(target, MODEL_ACT_GAIN, g)
            layout.copy_(target)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.nn.Parameter):
                drawn = bias if bias.device.type == "cpu" else torch.empty_like(bias, device="cpu")
                bias_init(drawn, fans(layout)[0], g)
                bias.copy_(drawn)
            count += 1
    return count


def layer_selection(names: list[str] | None) -> list[type[torch.nn.Module] | str] | None:
    """`model.layers` / `--layers` entries: a torch.nn class name (`Conv2d`, `nn.LayerNorm`,
    `torch.nn.Linear`) selects that class; anything else is a pattern on module names."""
    if names is None:
        return None
    chosen: list[type[torch.nn.Module] | str] = []
    for name in names:
        bare = name.removeprefix("torch.").removeprefix("nn.")
        found = getattr(torch.nn, bare, None) if bare.isidentifier() else None
        chosen.append(found if isinstance(found, type) and issubclass(found, torch.nn.Module)
                      else name)
    return chosen


def initialised(config: Config, init: InitSpec, act: ActivationSpec, device: torch.device,
                dtype: torch.dtype, in_features: int | None) -> torch.nn.Module:
    """One scheme's model as `profile` builds and initialises it (the same seed, the same
    weights), on the device: the plain MLP, the residual or normed model (`in_features` wide
    input), or the factory's; a data-dependent init (lsuv) is then `data_init`'s to finish."""
    if config.model.factory is not None:
        return factory_model(config, init).to(device=device, dtype=dtype)
    assert in_features is not None
    activation = make_activation(act.name, act.params)
    weight_init = make_init(init.name, init.params)
    model = uninitialised(config, init, act, in_features)
    return initialise(model, weight_init, make_bias_init(init.bias.name, init.bias.params),
                      act_gain=activation.gain, seed=config.seed, device=device, dtype=dtype)


def uninitialised(config: Config, init: InitSpec, act: ActivationSpec,
                  in_features: int) -> torch.nn.Module:
    """The built-in model a config describes, its Linear layers on the meta device (no storage:
    its shapes cost nothing, as actstat coord-check reads them at two widths)."""
    activation = make_activation(act.name, act.params)
    if config.model.plain_mlp:
        return build_mlp(in_features=in_features, widths=config.model.widths,
                         num_classes=config.model.num_classes, bias=config.model.bias,
                         activation=activation)
    return build_blocks(config, activation, in_features, make_init(init.name, init.params))


def data_init(model: torch.nn.Module, inputs: Any,
              weight_init: Callable | StructuralInit | DataInit,
              seed: int) -> tuple[LsuvLayer, ...] | None:
    """A data-dependent init's step on the batch (lsuv: actstat/lsuv.py), once the model holds
    its start; its per-layer records, or None for any other init (nothing to do)."""
    if not isinstance(weight_init, DataInit):
        return None
    from actstat.lsuv import scale_on_batch

    return scale_on_batch(model, inputs, weight_init, seed=seed)
