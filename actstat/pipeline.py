"""Pipeline: a Config -> a Report, through data, model, probe and analysis, one scheme at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from actstat import __version__, fused
from actstat.activations import Activation, make_activation
from actstat.analysis import (
    analyse_captured,
    design_notes,
    verdict,
)
from actstat.build import (
    blocks_label,
    data_init,
    initialised,
    layer_selection,
    model_label,
    scheme_label,
)
from actstat.capture import (
    capture,
    capture_stacked,
    first_tensor,
)
from actstat.config import (
    KEEP,
    ActivationSpec,
    Config,
    InitSpec,
    Thresholds,
)
from actstat.data import (
    Batch,
    load_batch,
    resolve_device,
    resolve_dtype,
    sample_shape_for,
)
from actstat.errors import ConfigError, DataError, ModelError
from actstat.expectations import (
    block_expectations,
    mlp_expectations,
    with_expected,
    with_row_expected,
    zip_named,
)
from actstat.inits import (
    make_init,
)
from actstat.model import (
    ResidualMLP,
    by_design,
    stack_mlps,
)
from actstat.plan import (
    Progress,
    model_groups,
    model_preflight,
    model_tag,
    preflight,
    schemes,
    stack_size,
    stacks,
)
from actstat.records import (
    SCHEMA_VERSION,
    ByDesign,
    Capture,
    InputStats,
    LsuvLayer,
    Run,
    Theory,
    finite_or_none,
)
from actstat.reduce import HIST_BINS, cross_entropy, moments
from actstat.report import Report
from actstat.theory import (
    Expected,
)
from actstat.train import train_probe


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
        return profile_factory(config, on_scheme, force=force)
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
    weight_init = make_init(init.name, init.params)
    model = initialised(config, init, act, batch.inputs.device, batch.inputs.dtype,
                        batch.inputs.shape[1])
    # lsuv's weights come from the batch, on this model alone: stacked, they are plain weights
    lsuv = data_init(model, batch.inputs, weight_init, config.seed)
    theory = None
    expectations: list[Expected | None] = [None] * len(config.model.widths)
    # mean-field theory draws every bias independently of the data; lsuv's are set by it
    if config.theory and lsuv is None:
        if input_second_moment is None:
            input_second_moment = float(batch.inputs.double().pow(2).mean())
        expectations, theory = mlp_expectations(model, activation, input_second_moment)
    return _Prepared(init, act, activation, model, expectations, theory, lsuv)


def _finish(config: Config, prepared: _Prepared, captured: Capture, batch: Batch,
            input_std: float) -> Run:
    t = config.thresholds
    layers = analyse_captured(captured.layers, input_std=input_std, thresholds=t)
    # hidden layers 1 to L carry the theory's expectations; the head (row L + 1) none
    layers = tuple(with_expected(layer, e) for layer, e in zip(layers, prepared.expectations)
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
        model = initialised(config, init, act, device, dtype, batch.inputs.shape[1])
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
                with_row_expected(layer, found)
                for layer, found in zip_named(run.layers,
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


def profile_factory(config: Config, on_scheme: Progress | None = None, *,
                    force: bool = False) -> Report:
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
    if not force:
        named_model_preflight(config, device, dtype, copies=2 if config.grad else 1)
    selection = layer_selection(config.model.layers)
    batch: Batch | None = None
    given: InputStats | None = None
    runs: list[Run] = []
    for init in config.init:
        model = initialised(config, init, ActivationSpec(), device, dtype, None)
        if batch is None:
            _check_vocabulary(model, config)
            batch = load_batch(config.data, seed=config.seed, device=device, dtype=dtype,
                               num_classes=config.model.num_classes,
                               shape=partial(sample_shape_for, model, source=config.data.source))
            given = input_stats(batch.inputs, source=batch.description, labelled=batch.labelled)
        assert given is not None
        lsuv = (data_init(model, batch.inputs, make_init(init.name, init.params), config.seed)
                if init.name != KEEP else None)
        targets, loss = model_loss(model, batch, config.seed)
        run = model_run(
            model, model_inputs(model, batch.inputs), targets, loss=loss,
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
    return assemble(config.model_dump(mode="json"), device, given, runs)


def assemble(config: Mapping[str, Any], device: torch.device, given: InputStats,
             runs: Sequence[Run | None]) -> Report:
    """The one place a Report is put together, for the CLI's commands and `actstat.profile`
    alike: the runs measured (None: a scheme not run), the batch they saw, the resolved config,
    and the versions and device that made them."""
    return Report(
        schema_version=SCHEMA_VERSION,
        actstat_version=__version__,
        torch_version=torch.__version__,
        device=str(device),
        config=dict(config),
        input=given,
        runs=tuple(run for run in runs if run is not None),
        reduction=fused.path_for(device, str(config.get("dtype", "float32"))),
    )


def _check_vocabulary(model: torch.nn.Module, config: Config) -> None:
    """Token ids from [0, data.vocab) that no Embedding of the model can index: said before the
    forward pass, whose IndexError would not name data.vocab (its default, 1000, exceeds a small
    model's vocabulary)."""
    if config.data.source != "tokens":
        return
    kinds = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    # a Hugging Face model says which Embedding takes the ids (GPT-2's position embedding,
    # 1024 rows, is larger than a small vocabulary); otherwise the largest, since a position
    # embedding may be smaller than the token embedding
    take = getattr(model, "get_input_embeddings", None)
    named = take() if callable(take) else None
    rows = ([named.num_embeddings] if isinstance(named, kinds)
            else [m.num_embeddings for m in model.modules() if isinstance(m, kinds)])
    which = "its input Embedding" if isinstance(named, kinds) else "its largest Embedding"
    if rows and max(rows) < config.data.vocab:
        raise DataError(f"data.vocab is {config.data.vocab} but the model's ids go up to "
                        f"{max(rows) - 1} ({which} has {max(rows)} rows); set --vocab "
                        f"{max(rows)} or less (data.vocab in a config)")


def named_model_preflight(config: Config, device: torch.device, dtype: torch.dtype, *,
                          copies: int) -> None:
    """A model by name (`hf:gpt2`) that would not fit in memory, refused before it is built:
    its parameters counted from its config (actstat/hf.py) against the device's free memory."""
    from actstat import hf

    spec = config.model.factory
    if not hf.is_hf(spec):
        return
    assert spec is not None
    named = hf.resolve(spec, config.model.kwargs)
    model_preflight(spec, hf.parameters(named), device, dtype, copies=copies,
                    keys=hf.size_keys(named))


def model_inputs(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """The batch as the model's forward takes it: positionally, or as its first keyword-only
    argument (`forward(self, *, input_ids)`) by name."""
    import inspect

    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return x
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    if not parameters or parameters[0].kind in positional:
        return x
    first = parameters[0]
    return {first.name: x} if first.kind is inspect.Parameter.KEYWORD_ONLY else x


def model_loss(model: torch.nn.Module, batch: Batch,
               seed: int) -> tuple[torch.Tensor, Callable | None]:
    """The targets and the loss of a user's model on a batch: cross-entropy against the labels
    (None: the engine's own); on token ids, for a causal language model next-token
    cross-entropy on the ids themselves (`next_token_loss`), for a sequence classifier one
    label per sample drawn with the seed among its classes; otherwise against the targets drawn
    with the batch (`drawn_target_loss`)."""
    from actstat import hf

    if batch.labelled:
        return batch.labels, None
    ids = batch.inputs
    if not ids.is_floating_point() and ids.dim() == 2:
        if ids.shape[1] > 1 and hf.causal_lm(model):
            return ids, next_token_loss
        classes = hf.sequence_classes(model)
        if classes:
            labels = torch.randint(classes, (ids.shape[0],),
                                   generator=torch.Generator().manual_seed(seed))
            return labels.to(ids.device), drawn_target_loss
    return batch.labels, drawn_target_loss


def next_token_loss(output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """A causal language model's loss on token ids: the cross-entropy of its logits at each
    position but the last, (batch, length, vocab), against the id at the next position (what
    `transformers` computes with `labels=input_ids`)."""
    logits = output[:, :-1]
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def drawn_target_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of a user's model on data without labels (gaussian, tokens), whose targets were
    drawn with the seed: cross-entropy when the output is logits that fit them, (batch, classes)
    for gaussian's class ids or (batch, length, vocab) for tokens' next ids (a language model's
    loss); otherwise the output's sum, so that every layer still gets a gradient."""
    if drawn_targets_fit(output, targets):
        return cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))
    return output.float().sum()


def drawn_targets_fit(output: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether `output` is logits over classes that `targets` index: (..., classes) for (...)."""
    return (output.dim() == targets.dim() + 1 and output.shape[:-1] == targets.shape
            and output.shape[-1] > int(targets.max()))


