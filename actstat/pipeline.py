"""Pipeline: a Config -> a Report, through data, model, probe and analysis, one scheme at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import product
from typing import Any

import torch

from actstat import __version__
from actstat.activations import ACTIVATIONS, Activation, make_activation
from actstat.analysis import (
    analyse_captured,
    analyse_trajectory,
    design_notes,
    verdict,
)
from actstat.capture import (
    capture,
    capture_stacked,
    first_tensor,
    is_weight_layer,
    select_output,
    transposed_linear,
)
from actstat.config import (
    DEFAULT_TRAIN_STEPS,
    KEEP,
    ActivationSpec,
    Config,
    InitSpec,
    ModelConfig,
    Thresholds,
)
from actstat.data import (
    Batch,
    load_batch,
    load_pool,
    resolve_device,
    resolve_dtype,
    sample_shape_for,
)
from actstat.errors import ActstatError, ConfigError, DataError, ModelError
from actstat.inits import (
    ALL_INITS,
    BIAS_INITS,
    DataInit,
    StructuralInit,
    fans,
    make_bias_init,
    make_init,
)
from actstat.memory import available_memory as host_available_memory
from actstat.model import (
    NORMS,
    ResidualMLP,
    build_mlp,
    build_normed_mlp,
    build_residual,
    by_design,
    hidden_linears,
    initialise,
    parameter_variances,
    stack_mlps,
)
from actstat.records import (
    SCHEMA_VERSION,
    ByDesign,
    Capture,
    InputStats,
    LayerStats,
    LsuvLayer,
    Run,
    Theory,
    Trajectory,
    finite_or_none,
)
from actstat.reduce import HIST_BINS, cross_entropy, moments
from actstat.registry import label
from actstat.report import Report
from actstat.theory import (
    Expected,
    expected,
    expected_normed_mlp,
    expected_residual,
    phase,
)
from actstat.train import train_probe
from actstat.watch import Schedule, StepProgress, StepRecord, watch, watch_stacked


def schemes(config: Config) -> list[tuple[InitSpec, ActivationSpec]]:
    """Every (init, activation) of the grid, inits outer, in config order; then the compare list.
    A user's model (model.factory) runs its own activations: one scheme per init, each paired
    with the default ActivationSpec, which is not used."""
    if config.model.factory is not None:
        return [(init, ActivationSpec()) for init in config.init]
    grid = list(product(config.init, config.activation))
    return grid + [(scheme.init, scheme.activation) for scheme in config.compare]


# called after each scheme with (schemes done, schemes in all, the scheme's label)
Progress = Callable[[int, int, str], None]


def memory_needed(config: Config, in_features: int, element_bytes: int) -> dict[str, int]:
    """Bytes one scheme needs at its peak, by part (a stack of K schemes needs K times the
    activations and its own copy of the weights: `stack_size` keeps stacks within free memory).

    weights: every Linear's weight and bias (twice with gradients: .grad mirrors them; once more
    for the training probe's snapshot). activations: without gradients, about four tensors of
    the widest layer at a time (output, the probe's scaled copy and mask, the next input); with
    gradients, autograd also keeps every layer's pre- and post-activation for the backward pass.
    data: the batch.
    """
    widths = config.model.widths
    fans = list(zip([in_features, *widths], [*widths, config.model.num_classes]))
    weights = sum(fan_in * fan_out + fan_out for fan_in, fan_out in fans) * element_bytes
    weights *= (2 if config.grad else 1) + (1 if config.train.steps else 0)
    batch = config.data.batch_size
    widest = max([in_features, *widths])
    activations = 4 * batch * widest * element_bytes
    if config.grad:
        activations += 2 * batch * sum(widths) * element_bytes
    return {"weights": weights, "activations": activations,
            "data": batch * in_features * element_bytes}


def available_memory(device: torch.device) -> int | None:
    """Free memory on the device: CUDA's free bytes, or the host's available memory within its
    container's limit (actstat/memory.py); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_available_memory()


# refuse a run that needs more than this share of the free memory
MEMORY_HEADROOM = 0.9


def preflight(config: Config, in_features: int, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before allocating the models, a run that cannot fit in the device's free memory."""
    needed = memory_needed(config, in_features, torch.finfo(dtype).bits // 8)
    total = sum(needed.values())
    free = available_memory(device)
    if free is None or total <= MEMORY_HEADROOM * free:
        return
    parts = ", ".join(f"{name} {size / 2**30:.1f}" for name, size in needed.items())
    raise ActstatError(
        f"this run needs about {total / 2**30:.1f} GiB ({parts}) but {device} has "
        f"{free / 2**30:.1f} GiB free; lower the depth, width or batch size, use --no-grad, "
        "or pass --force to try anyway")


# at most this many schemes run side by side: past it the gain is gone and memory is not
MAX_STACK = 16


def stacks(todo: list[tuple[InitSpec, ActivationSpec]], size: int) -> list[list[int]]:
    """Indices of `todo` in groups that can run as one stacked model: schemes with the same
    activation (name and parameters; widths, bias, device and dtype are the config's), at most
    `size` to a group, in order of each group's first scheme."""
    by_activation: dict[str, list[int]] = {}
    for index, (_, act) in enumerate(todo):
        by_activation.setdefault(act.model_dump_json(), []).append(index)
    return [indices[start:start + size] for indices in by_activation.values()
            for start in range(0, len(indices), size)]


def stack_size(config: Config, in_features: int, device: torch.device, dtype: torch.dtype) -> int:
    """How many schemes to run side by side: up to MAX_STACK, fewer where K times one scheme's
    activations and gradients (plus the stacked copy of the weights) would not fit in half of
    the device's free memory."""
    if config.train.steps:
        return 1
    needed = memory_needed(config, in_features, torch.finfo(dtype).bits // 8)
    per_scheme = needed["activations"] + 2 * needed["weights"]  # its model and its stacked copy
    free = available_memory(device)
    if free is None:
        return 1
    return max(1, min(MAX_STACK, int(0.5 * free) // max(per_scheme, 1)))


def profile(config: Config, on_scheme: Progress | None = None, *, force: bool = False,
            stack: int | None = None) -> Report:
    """Load the batch once, then build, initialise and measure one model per scheme; schemes
    that share an activation are measured side by side as one stacked model (`stack`: at most
    this many at once; default from `stack_size`, 1 to measure every scheme on its own). With
    `model.factory`, the user's model once per init instead (`profile_factory`). Compare schemes
    with model keys of their own run on their own models (`profile_mixed`)."""
    if config.mixed_models:
        return profile_mixed(config, on_scheme, force=force, stack=stack)
    if config.model.factory is not None:
        return profile_factory(config, on_scheme)
    if not config.model.plain_mlp:
        return profile_blocks(config, on_scheme)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    batch = load_batch(config.data, seed=config.seed, device=device, dtype=dtype,
                       num_classes=config.model.num_classes)
    in_features = batch.inputs.shape[1]
    if not force:
        preflight(config, in_features, device, dtype)
    with torch.inference_mode():  # the batch's moments and second moment, fetched once
        inputs = torch.stack(moments(batch.inputs, 0.0)[:2]
                             + [batch.inputs.double().pow(2).mean()]).tolist()
    todo = schemes(config)
    size = (stack if stack is not None else 1 if len(todo) == 1
            else stack_size(config, in_features, device, dtype))
    runs: list[Run | None] = [None] * len(todo)
    done = 0
    for group in stacks(todo, size):
        measured = profile_schemes(config, [todo[i] for i in group], batch, input_std=inputs[1],
                                   input_second_moment=inputs[2])
        for index, run in zip(group, measured):
            runs[index] = run
            done += 1
            if on_scheme is not None:
                on_scheme(done, len(todo), run.scheme)
    given = InputStats(
        source=batch.description,
        batch_size=batch.inputs.shape[0],
        features=batch.inputs.shape[1],
        labelled=batch.labelled,
        mean=finite_or_none(inputs[0]),
        std=finite_or_none(inputs[1]),
        shape=tuple(batch.inputs.shape[1:]),
    )
    return _report(config, device, given, runs)


def model_groups(config: Config) -> list[tuple[Config, list[int]]]:
    """The config split by the model each scheme runs: one config per model (the config's own
    first, with its init × activation grid), each with the positions of its schemes in
    `schemes(config)`. Schemes of one model stay together, so the plain MLP's still stack."""
    grid = len(config.init) * len(config.activation)
    groups: dict[str, tuple[ModelConfig, list[Any], list[int]]] = {
        config.model.model_dump_json(): (config.model, [], list(range(grid)))}
    for position, scheme in enumerate(config.compare, start=grid):
        model = config.scheme_model(scheme)
        _, members, positions = groups.setdefault(model.model_dump_json(), (model, [], []))
        members.append(scheme.model_copy(update={"model": None}))
        positions.append(position)
    return [(config.model_copy(update={
                "model": model, "compare": members,
                "init": config.init if model == config.model else [],
                "activation": config.activation if model == config.model else []}), positions)
            for model, members, positions in groups.values() if positions]


def model_tag(model: ModelConfig) -> str:
    """A model's structure in a few words, to tell schemes of a mixed compare apart: `plain`,
    `residual`, `residual, layernorm`, `residual, branch 3, rmsnorm post, α=0.5`."""
    parts = [model.block]
    if model.block == "residual" and \
            model.branch_depth != ModelConfig.model_fields["branch_depth"].default:
        parts.append(f"branch {model.branch_depth}")
    if model.norm != "none":
        parts.append(model.norm + (" post" if model.norm_position == "post" else ""))
    if model.multiplier is not None:
        parts.append(f"α={model.multiplier:g}")
    return ", ".join(parts)


def profile_mixed(config: Config, on_scheme: Progress | None = None, *, force: bool = False,
                  stack: int | None = None) -> Report:
    """A compare whose schemes run different models (a plain MLP beside residual ones): each
    model's schemes measured as a config of their own (stacked where shapes allow, separately
    where not), on the same batch (same data and seed), in config order; each scheme's label
    says its model: `fixup + relu (residual)`."""
    todo = len(schemes(config))
    runs: list[Run | None] = [None] * todo
    given: InputStats | None = None
    device = None
    done = 0
    for part, positions in model_groups(config):
        offset, tag = done, model_tag(part.model)

        def progress(count: int, _total: int, label: str, offset: int = offset,
                     tag: str = tag) -> None:
            if on_scheme is not None:
                on_scheme(offset + count, todo, f"{label} ({tag})")

        report = profile(part, progress, force=force, stack=stack)
        given = given or report.input
        device = device or report.device
        for position, run in zip(positions, report.runs):
            runs[position] = replace(run, scheme=f"{run.scheme} ({tag})")
        done += len(positions)
    assert given is not None
    return _report(config, torch.device(device), given, runs)


def profile_scheme(config: Config, init: InitSpec, act: ActivationSpec, batch: Batch, *,
                   input_std: float, input_second_moment: float | None = None) -> Run:
    """One scheme on its own."""
    return profile_schemes(config, [(init, act)], batch, input_std=input_std,
                           input_second_moment=input_second_moment)[0]


@dataclass(frozen=True)
class _Prepared:
    """One scheme's initialised model and its mean-field expectations, before measurement."""

    init: InitSpec
    act: ActivationSpec
    activation: Activation
    model: torch.nn.Module
    expectations: list[Expected | None]
    theory: Theory | None
    lsuv: tuple[LsuvLayer, ...] | None


def profile_schemes(config: Config, specs: list[tuple[InitSpec, ActivationSpec]], batch: Batch,
                    *, input_std: float, input_second_moment: float | None = None) -> list[Run]:
    """Schemes that share an activation: each initialised as on its own, then measured in one
    pass of their stacked model (one scheme: its own model); a Run each, in order."""
    prepared = [_prepare(config, init, act, batch, input_second_moment) for init, act in specs]
    options = {"grad": config.grad, "bins": HIST_BINS if config.hist else 0,
               "thresholds": config.thresholds}
    if len(prepared) == 1:
        captures = [capture(prepared[0].model, batch.inputs, batch.labels, **options)]
    else:
        stacked = stack_mlps([p.model for p in prepared])
        captures = capture_stacked(stacked, batch.inputs, batch.labels, groups=len(prepared),
                                   **options)
        del stacked
    return [_finish(config, p, c, batch, input_std) for p, c in zip(prepared, captures)]


def _prepare(config: Config, init: InitSpec, act: ActivationSpec, batch: Batch,
             input_second_moment: float | None) -> _Prepared:
    activation = make_activation(act.name, act.params)
    model = build_mlp(
        in_features=batch.inputs.shape[1],
        widths=config.model.widths,
        num_classes=config.model.num_classes,
        bias=config.model.bias,
        activation=activation,
    )
    weight_init = make_init(init.name, init.params)
    model = initialise(
        model,
        weight_init,
        make_bias_init(init.bias.name, init.bias.params),
        act_gain=activation.gain,
        seed=config.seed,
        device=batch.inputs.device,
        dtype=batch.inputs.dtype,
    )
    # lsuv's weights come from the batch, on this model alone: stacked, they are plain weights
    lsuv = data_init(model, batch.inputs, weight_init, config.seed)
    theory = None
    expectations: list[Expected | None] = [None] * len(config.model.widths)
    # mean-field theory draws every bias independently of the data; lsuv's are set by it
    if config.theory and lsuv is None:
        if input_second_moment is None:
            input_second_moment = float(batch.inputs.double().pow(2).mean())
        expectations, theory = _theory(model, activation, input_second_moment)
    return _Prepared(init, act, activation, model, expectations, theory, lsuv)


def data_init(model: torch.nn.Module, inputs: Any,
              weight_init: Callable | StructuralInit | DataInit,
              seed: int) -> tuple[LsuvLayer, ...] | None:
    """A data-dependent init's step on the batch (lsuv: actstat/lsuv.py), once the model holds
    its start; its per-layer records, or None for any other init (nothing to do)."""
    if not isinstance(weight_init, DataInit):
        return None
    from actstat.lsuv import scale_on_batch

    return scale_on_batch(model, inputs, weight_init, seed=seed)


def _finish(config: Config, prepared: _Prepared, captured: Capture, batch: Batch,
            input_std: float) -> Run:
    t = config.thresholds
    layers = analyse_captured(captured.layers, input_std=input_std, thresholds=t)
    # hidden layers 1 to L carry the theory's expectations; the head (row L + 1) none
    layers = tuple(_with_expected(layer, e) for layer, e in zip(layers, prepared.expectations)
                   ) + layers[len(prepared.expectations):]
    # a stacked pass measured each scheme's own Linear layers
    layers = tuple(replace(layer, module=layer.module.replace("StackedLinear", "Linear"))
                   for layer in layers)
    init, act = prepared.init, prepared.act
    init_params = {**init.params, "bias": init.bias.model_dump()}
    train = None
    if config.train.steps:
        train = train_probe(prepared.model, batch.inputs, batch.labels, steps=config.train.steps,
                            lr=config.train.learning_rate, symmetric=t.symmetric)
    return Run(scheme_label(init, act), init.name, init_params, act.name, dict(act.params),
               verdict(layers), finite_or_none(captured.loss), layers, train, prepared.theory,
               lsuv=prepared.lsuv)


def _theory(model: torch.nn.Module, activation: Activation,
            input_second_moment: float) -> tuple[list[Expected | None], Theory]:
    """Mean-field expectations per hidden layer from the model's actual parameters, and the
    phase of the deep layers (the last hidden layer's σ_w², σ_b²)."""
    linears = hidden_linears(model)
    variances = parameter_variances(model, linears)
    sigma_w2 = [w2 for w2, _ in variances]
    sigma_b2 = [b2 for _, b2 in variances]
    layers = expected(activation, sigma_w2, sigma_b2, input_second_moment)
    last = layers[-1].pre_std
    found = phase(activation, sigma_w2[-1], sigma_b2[-1], last**2 if last is not None else math.inf)
    return list(layers), Theory(finite_or_none(found.chi1), finite_or_none(found.q_star),
                                found.phase)


def _with_expected(layer: LayerStats, expected_here: Expected | None) -> LayerStats:
    if expected_here is None:
        return layer
    return _with_block_expected(layer, (expected_here.pre_std, expected_here.post_mean,
                                        expected_here.post_std))


def scheme_label(init: InitSpec, act: ActivationSpec) -> str:
    """`kaiming(mode='fan_out') + relu`: names with every non-default parameter."""
    init_label = label(init.name, init.params, ALL_INITS[init.name])
    if init.bias.name != "zeros":
        bias = label(init.bias.name, init.bias.params, BIAS_INITS[init.bias.name])
        init_label += f" [bias {bias}]"
    return f"{init_label} + {label(act.name, act.params, ACTIVATIONS[act.name])}"


# ----------------------------------------------------------------------------------------------
# any model: actstat.profile and --model


def input_stats(inputs: Any, *, source: str, labelled: bool) -> InputStats:
    """The batch's size, one sample's shape, and the mean and std of its first tensor (None for
    integer token ids, whose moments mean nothing), fetched in one copy."""
    x = first_tensor(inputs)
    if x is None:
        raise ModelError(f"the inputs hold no tensor (got {type(inputs).__name__}): pass a "
                         "tensor, a tuple of the forward's arguments, or a dict of keyword "
                         "arguments")
    mean = std = None
    if x.is_floating_point() and x.numel():
        with torch.no_grad():
            mean, std = torch.stack(moments(x.detach(), 0.0)[:2]).tolist()
    shape = tuple(x.shape[1:])
    return InputStats(source=source, batch_size=x.shape[0] if x.dim() else 1,
                      features=max(math.prod(shape), 1), labelled=labelled,
                      mean=finite_or_none(mean), std=finite_or_none(std), shape=shape)


def model_run(model: torch.nn.Module, inputs: Any, targets: Any, *, scheme: str, init: str,
              init_params: Mapping[str, Any], label: str, input_std: float | None,
              thresholds: Thresholds, loss: Callable | None = None,
              output: int | str | None = None, layers: Any = None, grad: bool = True,
              hist: bool = False, blocks: Sequence[torch.nn.Module] = (),
              by_design: ByDesign | None = None) -> Run:
    """One pass of the general probe (actstat/capture.py) over `model`, analysed into a Run;
    `blocks` are measured as blocks even without a repeat, and the flags that `by_design`'s
    deliberate zeros explain are set aside as by design, with a note."""
    captured = capture(model, inputs, targets, loss=loss, output=output, layers=layers, grad=grad,
                       bins=HIST_BINS if hist else 0, thresholds=thresholds, blocks=blocks)
    rows = analyse_captured(captured.layers, input_std=input_std, thresholds=thresholds,
                            by_design=by_design)
    return Run(scheme, init, dict(init_params), "model", {}, verdict(rows),
               finite_or_none(captured.loss), rows, model=label,
               notes=design_notes(rows, by_design))


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


# what a row expects: (pre std, post mean, post std), None where the theory gives no number
RowExpected = tuple[float | None, float | None, float | None]


def block_expectations(model: torch.nn.Module, activation: Activation,
                       input_second_moment: float) -> dict[str, RowExpected]:
    """Mean-field expectations of `build_blocks`'s model, by row name, from its actual
    parameters: `expected_residual` for residual blocks (input layer, each branch layer, the
    norm's output, the stream), `expected_normed_mlp` for a plain MLP with norms. The head has
    none, as in the MLP: its num_classes units are too few for a wide-limit expectation (one
    draw of 10 rows of W reads the stream's mean direction differently every seed). Empty where
    the model's blocks have different multipliers (the residual map takes one α)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    variances = parameter_variances(model, linears)
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    norm = _norm_name(norms[0]) if norms else "none"
    eps = _norm_eps(norms[0]) if norms else 1e-5
    batch_statistics = model.training
    rows: dict[str, RowExpected] = {}
    if isinstance(model, ResidualMLP):
        blocks = list(model.blocks)
        alphas = {b.multiplier.item() for b in blocks if b.initial_multiplier is not None}
        if len(alphas) > 1:
            return {}
        alpha = alphas.pop() if alphas else 1.0
        pre = norm != "none" and blocks[0].pre
        branch_depth = sum(isinstance(x, torch.nn.Linear) for x in blocks[0].branch)
        per_block = [variances[1 + i * branch_depth:1 + (i + 1) * branch_depth]
                     for i in range(len(blocks))]
        found = expected_residual(activation, input_second_moment, variances[0], per_block,
                                  alpha=alpha, norm=norm,
                                  norm_position="pre" if pre or norm == "none" else "post",
                                  eps=eps, batch_statistics=batch_statistics)
        first = found.input_layer
        rows["inp"] = (first.pre_std, first.post_mean, first.post_std)
        for i, block in enumerate(found.blocks):
            if norm != "none":
                normed = block.branch_inputs[0] if pre else block.stream
                rows[f"blocks.{i}.norm"] = (None, normed.mean, normed.std)
            for k, layer in enumerate(block.branch, start=1):
                rows[f"blocks.{i}.branch.fc{k}"] = (layer.pre_std, layer.post_mean,
                                                     layer.post_std)
            rows[f"blocks.{i}"] = (None, block.stream.mean, block.stream.std)
    else:
        position = _normed_position(model)
        found_layers = expected_normed_mlp(activation, input_second_moment, variances[:-1],
                                           norm=norm, norm_position=position, eps=eps,
                                           batch_statistics=batch_statistics)
        for k, layer in enumerate(found_layers, start=1):
            if position == "pre":  # fc{k}: the Linear alone; norm{k}: the norm, then φ
                rows[f"fc{k}"] = (None, layer.linear.mean, layer.linear.std)
                rows[f"norm{k}"] = (layer.norm.std, layer.activation.mean, layer.activation.std)
            else:  # fc{k}: the Linear, then φ; norm{k}: the norm
                rows[f"fc{k}"] = (layer.linear.std, layer.activation.mean, layer.activation.std)
                rows[f"norm{k}"] = (None, layer.norm.mean, layer.norm.std)
    return rows


def _norm_name(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.LayerNorm):
        return "layernorm"
    if isinstance(module, torch.nn.BatchNorm1d):
        return "batchnorm"
    return "rmsnorm"


def _norm_eps(module: torch.nn.Module) -> float:
    """The norm's ε: RMSNorm's None is its dtype's machine epsilon."""
    eps = getattr(module, "eps", None)
    if eps is None:
        return torch.finfo(next(module.parameters()).dtype).eps
    return float(eps)


def _normed_position(model: torch.nn.Module) -> str:
    """A normed MLP's norm position: 'pre' when norm1 comes before act1 (fc1, norm1, act1)."""
    names = [name for name, _ in model.named_children()]
    return "pre" if names.index("norm1") < names.index("act1") else "post"


def _zip_named(layers: Sequence[LayerStats],
               found: dict[str, RowExpected]) -> list[tuple[LayerStats, RowExpected | None]]:
    return [(layer, found.get(layer.name)) for layer in layers]


def _with_block_expected(layer: LayerStats, found: RowExpected | None) -> LayerStats:
    """A row with its expectation: pre std where the row has a pre, post mean and std."""
    if found is None:
        return layer
    pre_std, post_mean, post_std = found
    pre = layer.pre
    if pre is not None and pre_std is not None:
        pre = replace(pre, expected_std=pre_std)
    return replace(layer, pre=pre,
                   post=replace(layer.post, expected_mean=post_mean, expected_std=post_std))


def blocks_label(config: Config) -> str:
    """What a run of `build_blocks`'s model names as its model: `residual ×8 (branch 2) +
    layernorm (pre)`."""
    m = config.model
    text = (f"residual ×{m.depth} (branch {m.branch_depth})" if m.block == "residual"
            else f"MLP ×{m.depth}")
    if m.multiplier is not None:
        text += f" α={m.multiplier:g}"
    return text + (f" + {m.norm} ({m.norm_position})" if m.norm != "none" else "")


def profile_blocks(config: Config, on_scheme: Progress | None = None) -> Report:
    """The built-in model with residual blocks or norm layers, once per scheme of the config
    (its init × activation grid, then its compare list), each measured on its own by the
    general probe (`model_run`): rows are modules by name (blocks.3, blocks.3.branch.fc1), not
    numbered hidden layers, each with its mean-field expectation (`block_expectations`)."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    batch = load_batch(config.data, seed=config.seed, device=device, dtype=dtype,
                       num_classes=config.model.num_classes)
    given = input_stats(batch.inputs, source=batch.description, labelled=batch.labelled)
    todo = schemes(config)
    runs: list[Run] = []
    for init, act in todo:
        activation = make_activation(act.name, act.params)
        weight_init = make_init(init.name, init.params)
        model = initialise(
            build_blocks(config, activation, batch.inputs.shape[1], weight_init),
            weight_init, make_bias_init(init.bias.name, init.bias.params),
            act_gain=activation.gain, seed=config.seed, device=device, dtype=dtype)
        lsuv = data_init(model, batch.inputs, weight_init, config.seed)
        run = model_run(
            model, batch.inputs, batch.labels, loss=None if batch.labelled else drawn_target_loss,
            scheme=scheme_label(init, act), init=init.name,
            init_params={**init.params, "bias": init.bias.model_dump()},
            label=blocks_label(config), input_std=given.std, thresholds=config.thresholds,
            layers=layer_selection(config.model.layers), grad=config.grad, hist=config.hist,
            # its blocks by name: one block has no repeat for the probe to find it by
            blocks=tuple(model.blocks) if isinstance(model, ResidualMLP) else (),
            by_design=by_design(model, weight_init, activation, init.name))
        if config.theory and lsuv is None:  # lsuv's biases come from the data: no theory
            second = float(batch.inputs.double().pow(2).mean())
            run = replace(run, layers=tuple(
                _with_block_expected(layer, found)
                for layer, found in _zip_named(run.layers,
                                               block_expectations(model, activation, second))))
        train = None
        if config.train.steps:
            train = train_probe(model, batch.inputs, batch.labels, steps=config.train.steps,
                                lr=config.train.learning_rate,
                                symmetric=config.thresholds.symmetric)
        runs.append(replace(run, act=act.name, act_params=dict(act.params), lsuv=lsuv,
                            train=train))
        del model
        if on_scheme is not None:
            on_scheme(len(runs), len(todo), run.scheme)
    return _report(config, device, given, runs)


# the gain an init's `gain: auto` takes in a user's model, whose activations are its own: ReLU's
MODEL_ACT_GAIN = math.sqrt(2.0)


def profile_factory(config: Config, on_scheme: Progress | None = None) -> Report:
    """The user's model (`model.factory` called with `model.kwargs`), built afresh for each init
    of the config, on the batch shaped for it: `keep` measures it as the factory made it (the
    factory runs with torch's generator seeded with `seed`), any other init re-draws every
    weight layer's weight and bias first (norm layers keep theirs)."""
    if config.train.steps:
        raise ConfigError("train.steps (--steps) of run and compare trains the built-in models "
                          "on their one batch; a model factory's model is trained by `actstat "
                          "train --model ...`: set steps to 0 here")
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    spec = config.model.factory
    assert spec is not None
    selection = layer_selection(config.model.layers)
    batch: Batch | None = None
    given: InputStats | None = None
    runs: list[Run] = []
    for init in config.init:
        model = _built(config, init)
        if batch is None:
            _check_vocabulary(model, config)
            batch = load_batch(config.data, seed=config.seed, device=device, dtype=dtype,
                               num_classes=config.model.num_classes,
                               shape=partial(sample_shape_for, model, source=config.data.source))
            given = input_stats(batch.inputs, source=batch.description, labelled=batch.labelled)
        model = model.to(device=device, dtype=dtype)
        assert given is not None
        lsuv = (data_init(model, batch.inputs, make_init(init.name, init.params), config.seed)
                if init.name != KEEP else None)
        run = model_run(
            model, batch.inputs, batch.labels, loss=None if batch.labelled else drawn_target_loss,
            scheme=model_label(spec, init), init=init.name,
            init_params={} if init.name == KEEP else {**init.params,
                                                      "bias": init.bias.model_dump()},
            label=spec, input_std=given.std, thresholds=config.thresholds,
            output=config.model.output, layers=selection, grad=config.grad, hist=config.hist)
        runs.append(replace(run, lsuv=lsuv))
        del model
        if on_scheme is not None:
            on_scheme(len(runs), len(config.init), run.scheme)
    assert batch is not None and given is not None
    return _report(config, device, given, runs)


def _report(config: Config, device: torch.device, given: InputStats,
            runs: Sequence[Run | None]) -> Report:
    """The Report of a config's runs on its batch, whichever model measured them."""
    return Report(
        schema_version=SCHEMA_VERSION,
        actstat_version=__version__,
        torch_version=torch.__version__,
        device=str(device),
        config=config.model_dump(mode="json"),
        input=given,
        runs=tuple(run for run in runs if run is not None),
    )


def _check_vocabulary(model: torch.nn.Module, config: Config) -> None:
    """Token ids from [0, data.vocab) that no Embedding of the model can index: said before the
    forward pass, whose IndexError would not name data.vocab (its default, 1000, exceeds a small
    model's vocabulary)."""
    if config.data.source != "tokens":
        return
    kinds = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    rows = [m.num_embeddings for m in model.modules() if isinstance(m, kinds)]
    # the largest: a position embedding may be smaller than the token embedding
    if rows and max(rows) < config.data.vocab:
        raise DataError(f"data.vocab is {config.data.vocab} but the model's largest Embedding "
                        f"has {max(rows)} rows: its ids would index past it; set data.vocab to "
                        f"{max(rows)} or less (data: {{source: tokens, vocab: {max(rows)}}} in "
                        "the config)")


def drawn_target_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of a user's model on data without labels (gaussian, tokens), whose targets were
    drawn with the seed: cross-entropy when the output is logits that fit them, (batch, classes)
    for gaussian's class ids or (batch, length, vocab) for tokens' next ids (a language model's
    loss); otherwise the output's sum, so that every layer still gets a gradient."""
    fits = (output.dim() == targets.dim() + 1 and output.shape[:-1] == targets.shape
            and output.shape[-1] > int(targets.max()))
    if fits:
        return cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))
    return output.float().sum()


def model_label(spec: str, init: InitSpec) -> str:
    """`nets.py:make_cnn + kaiming(mode='fan_out')`; `+ keep` for the model's own init."""
    name = spec.replace("\\", "/").rsplit("/", 1)[-1]
    if init.name == KEEP:
        return f"{name} + {KEEP}"
    return f"{name} + {scheme_label(init, ActivationSpec()).rsplit(' + ', 1)[0]}"


def _built(config: Config, init: InitSpec) -> torch.nn.Module:
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


# ----------------------------------------------------------------------------------------------
# actstat train: the statistics through training


def watch_report(config: Config, on_scheme: Progress | None = None,
                 on_step: Callable[[str], StepProgress] | None = None, *,
                 stack: int | None = None,
                 on_record: Callable[[str], StepRecord] | None = None) -> Report:
    """`actstat train`: each scheme measured at init as `profile` measures it, then built again
    from the same seed and trained as config.train says (actstat/watch.py), on mini-batches of
    the data source's whole pool; its trajectory, with events and verdict, goes on its Run.
    Schemes of the plain MLP that share an activation train side by side as one stacked model
    (`watch_stacked`, the numbers of separate runs; `stack`: at most this many at once, default
    from `train_stack_size`, 1 to train every scheme on its own); the residual and normed
    models and a factory's train one by one. `on_step(label)` gives the progress callback of a
    scheme's training, or of a stack's (its schemes' labels joined); `on_record(scheme)` the
    callback of each step a scheme records (--tensorboard). A compare of several models trains
    each model's schemes as a config of its own (`model_groups`)."""
    if config.mixed_models:
        return _watch_mixed(config, on_scheme, on_step, stack, on_record)
    t = config.train
    steps = t.steps or DEFAULT_TRAIN_STEPS
    # the measurement at init as `run` makes it, without run's one-batch training probe
    report = profile(config.model_copy(update={"train": t.model_copy(update={"steps": 0})}),
                     on_scheme)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    schedule = Schedule(steps=steps, every=t.every, batch_size=t.batch_size,
                        optimizer=t.optimizer, lr=t.learning_rate, momentum=t.beta, warmup=t.warmup,
                        seed=config.seed)
    batch: Batch | None = None  # the batch `run` measures: lsuv scales on it here too
    pool: Batch | None = None
    if config.model.factory is None:
        batch, pool = _data(config, device, dtype, None)
    todo = schemes(config)
    size = 1
    if config.model.factory is None and config.model.plain_mlp and len(todo) > 1:
        assert pool is not None
        size = stack if stack is not None else train_stack_size(
            config, pool.inputs.shape[1], device, dtype)
    groups = stacks(todo, size) if size > 1 else [[index] for index in range(len(todo))]
    trajectories: list[Trajectory | None] = [None] * len(todo)
    for group in groups:
        models = []
        for index in group:
            init, act = todo[index]
            model = initialised(config, init, act, device, dtype,
                                None if pool is None else pool.inputs.shape[1])
            if batch is None or pool is None:  # a factory's model: the data shaped for it
                batch, pool = _data(config, device, dtype, model)
            if init.name != KEEP:
                data_init(model, batch.inputs, make_init(init.name, init.params), config.seed)
            models.append(model)
        options = {"loss": _training_loss(pool.labelled, config.model.output),
                   "labelled": pool.labelled, "near_zero": config.thresholds.near_zero,
                   "saturation_cut": config.thresholds.saturation_cut,
                   "bins": HIST_BINS if config.hist else 0,
                   # the plain MLP's rows as its tables number them: 1 to L, then `head`
                   "numbered": report.runs[group[0]].model is None and config.model.plain_mlp,
                   "on_step": None if on_step is None else on_step(
                       ", ".join(report.runs[index].scheme for index in group))}
        records = [None if on_record is None else on_record(report.runs[index].scheme)
                   for index in group]
        if len(models) == 1:
            trained = [watch(models[0], pool.inputs, pool.labels, schedule,
                             on_record=records[0], **options)]
        else:
            stacked = stack_mlps(models)
            trained = watch_stacked(stacked, pool.inputs, pool.labels, schedule,
                                    groups=len(models), on_record=records, **options)
            del stacked
        del models
        for index, trajectory in zip(group, trained):
            trajectories[index] = trajectory
        if any(trajectory.stopped == "interrupted" for trajectory in trained):
            break  # Ctrl-C: what was recorded is kept, the schemes after it are not run
    runs = [replace(run, trajectory=analyse_trajectory(trajectory, config.thresholds))
            for run, trajectory in zip(report.runs, trajectories) if trajectory is not None]
    # the config as given (train.steps included, not the measurement's 0): `check` trains it again
    return replace(report, config=config.model_dump(mode="json"), runs=tuple(runs))


def _watch_mixed(config: Config, on_scheme: Progress | None,
                 on_step: Callable[[str], StepProgress] | None, stack: int | None,
                 on_record: Callable[[str], StepRecord] | None = None) -> Report:
    """`watch_report` of each model's part of a mixed compare, in config order, each scheme
    labelled with its model as `profile_mixed` labels it; Ctrl-C ends it at that part."""
    runs: list[Run | None] = [None] * len(schemes(config))
    first: Report | None = None
    for part, positions in model_groups(config):
        report = watch_report(part, on_scheme, on_step, stack=stack, on_record=on_record)
        first = first or report
        tag = model_tag(part.model)
        for position, run in zip(positions, report.runs):
            runs[position] = replace(run, scheme=f"{run.scheme} ({tag})")
        if any(run.trajectory is not None and run.trajectory.stopped == "interrupted"
               for run in report.runs):
            break
    assert first is not None
    return replace(first, config=config.model_dump(mode="json"),
                   runs=tuple(run for run in runs if run is not None))


def train_stack_size(config: Config, in_features: int, device: torch.device,
                     dtype: torch.dtype) -> int:
    """How many schemes `actstat train` trains side by side: up to MAX_STACK, fewer where K
    times one scheme's share would not fit in half of the device's free memory. A scheme's
    share: its weights four or five times (the model it is built as, its stacked copy, the
    gradient, and the optimiser's state: SGD's momentum buffer, Adam's two moments), and the
    activations of a mini-batch that autograd keeps for the backward pass (`memory_needed`'s,
    at train.batch_size)."""
    trained = config.model_copy(update={
        "grad": True, "train": config.train.model_copy(update={"steps": 0}),
        "data": config.data.model_copy(update={"batch_size": config.train.batch_size})})
    needed = memory_needed(trained, in_features, torch.finfo(dtype).bits // 8)
    copies = 3 + (2 if config.train.optimizer == "adam" else 1)
    per_scheme = needed["activations"] + copies * needed["weights"] // 2  # `weights` counts .grad
    free = available_memory(device)
    if free is None:
        return 1
    return max(1, min(MAX_STACK, int(0.5 * free) // max(per_scheme, 1)))


def _data(config: Config, device: torch.device, dtype: torch.dtype,
          model: torch.nn.Module | None) -> tuple[Batch, Batch]:
    """The batch `run` measures and the samples training draws from (`load_pool`), shaped for
    a factory's `model`."""
    shape = None if model is None else partial(sample_shape_for, model,
                                               source=config.data.source)
    batch = load_batch(config.data, seed=config.seed, device=device, dtype=dtype,
                       num_classes=config.model.num_classes, shape=shape)
    pool = load_pool(config.data, seed=config.seed, device=device, dtype=dtype,
                     num_classes=config.model.num_classes, shape=shape)
    if config.train.batch_size > pool.inputs.shape[0]:
        raise DataError(f"train.batch_size {config.train.batch_size} is more than the "
                        f"{pool.inputs.shape[0]} samples of {pool.description}; use "
                        f"--train-batch {pool.inputs.shape[0]} or fewer")
    return batch, pool


def initialised(config: Config, init: InitSpec, act: ActivationSpec, device: torch.device,
                dtype: torch.dtype, in_features: int | None) -> torch.nn.Module:
    """One scheme's model as `profile` builds and initialises it (the same seed, the same
    weights), on the device: the plain MLP, the residual or normed model (`in_features` wide
    input), or the factory's; a data-dependent init (lsuv) is then `data_init`'s to finish."""
    if config.model.factory is not None:
        return _built(config, init).to(device=device, dtype=dtype)
    assert in_features is not None
    activation = make_activation(act.name, act.params)
    weight_init = make_init(init.name, init.params)
    if config.model.plain_mlp:
        model = build_mlp(in_features=in_features, widths=config.model.widths,
                          num_classes=config.model.num_classes, bias=config.model.bias,
                          activation=activation)
    else:
        model = build_blocks(config, activation, in_features, weight_init)
    return initialise(model, weight_init, make_bias_init(init.bias.name, init.bias.params),
                      act_gain=activation.gain, seed=config.seed, device=device, dtype=dtype)


def _training_loss(labelled: bool, output: int | str | None) -> Callable:
    """Cross-entropy against the labels (drawn targets where there are none: `drawn_target_loss`)
    of the output's tensor that `model.output` selects."""

    def loss(out: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = select_output(out, output)
        if labelled:
            return cross_entropy(logits, targets)
        return drawn_target_loss(logits, targets)

    return loss
