"""Coordinate check: how each layer's coordinate size moves with the model's width, step by step
(`actstat coord-check`, `actstat.coord_check`).

Copies of one model at several widths are trained for a few steps on the same mini-batches, and
every recorded step is a pass of the measurement engine (actstat/watch.py: the rows of `actstat
run`), as the authors of μP check an implementation (Tensor Programs V, section "Coordinate
check"; the mup package's `get_coord_data`). Definitions:

- **coordinate size** of a layer at a step: the mean |x| of its row's `post` tensor over the
  step's mini-batch (`abs_mean`, actstat/analysis.py); the built-in MLP's `head` row is the
  logits. Step 0 is the model at init, step s the forward pass after s updates.
- **slope** of a layer at a step: the least-squares slope of ln(size) against ln(width) over
  the widths, one per seed; the layer's slope is their mean and its `spread` their population
  std. A size that is 0 (a zero readout at init) or missing (a run that diverged) leaves the
  slope undefined (None). A width-stable layer has slope ≈ 0; slope 1 means the size doubles
  with the width.
- **flags**: `grows_with_width` where a slope exceeds thresholds.width_slope,
  `shrinks_with_width` where it is below minus it, at any step; the verdict is `width-stable`
  when no layer carries either, else the first of them in that order.

The widths run independently, each as one task of an executor (actstat/executors.py; in-process
by default). Within a width, the built-in plain MLP's seeds train side by side as one stacked
model (`stack_mlps`); other models' seeds train one after another. Every copy sees the same
mini-batches (drawn with `seed`), seed k's weights are drawn with seed + k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from actstat.build import data_init, factory_model, initialised, uninitialised
from actstat.config import DEFAULT_MOMENTUM, KEEP, Config, Thresholds
from actstat.data import load_pool, resolve_device, resolve_dtype, sample_shape_for
from actstat.errors import ActstatError, ConfigError, DataError, ModelError
from actstat.executors import Executor, InProcess
from actstat.inits import make_init
from actstat.model import stack_mlps
from actstat.parametrisation import apply, kinds, learning_rates, param_groups, shapes
from actstat.pipeline import (
    assemble,
    input_stats,
    model_inputs,
    model_loss,
    next_token_loss,
)
from actstat.records import (
    WIDTH_FLAGS,
    WIDTH_STABLE,
    CoordCheck,
    CoordLayer,
    Event,
    Trajectory,
    finite_or_none,
)
from actstat.reduce import cross_entropy
from actstat.report import Report
from actstat.training import training_loss
from actstat.watch import Optimiser, Schedule, watch, watch_stacked

# (width, the seeds it trains, steps done, steps in all) after every step of a width's run
CoordProgress = Callable[[int, Sequence[int], int, int], None]
# a user's optimiser: (model, learning rate) -> optimiser
OptimiserFactory = Callable[[nn.Module, float], torch.optim.Optimizer]


class CoordCheckError(ActstatError):
    """A coord check that cannot give slopes: a width the model rejects, a run that diverged."""


@dataclass(frozen=True)
class Plan:
    """What every width's run shares: the schedule and, for the API, the user's model and data
    (None: the config's)."""

    config: Config
    seeds: tuple[int, ...]
    factory: Callable[[int], nn.Module] | None = None
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    optimiser: OptimiserFactory | None = None
    # the built-in model's samples, loaded once for every width (a factory's are shaped for its
    # model at each width; None: load them there)
    pool: Any = None

    @property
    def schedule(self) -> Schedule:
        cc = self.config.coord_check
        # steps + 1 passes: step s is measured before update s, so the last pass measures the
        # model after `steps` updates (its own update is not measured)
        return Schedule(steps=cc.steps + 1, every=1, batch_size=cc.batch_size,
                        optimizer=cc.optimizer, lr=cc.lr,
                        momentum=DEFAULT_MOMENTUM[cc.optimizer], seed=self.config.seed)


@dataclass(frozen=True)
class WidthRun:
    """One width's copies, trained: each row's coordinate size [row][step][seed], the loss
    [step][seed], and the step at which each seed's loss went non-finite (None: it did not)."""

    width: int
    names: tuple[str, ...]
    sizes: tuple[tuple[tuple[float | None, ...], ...], ...]
    loss: tuple[tuple[float | None, ...], ...]
    stopped: tuple[int | None, ...]


def coord_check_report(config: Config, *, on_progress: CoordProgress | None = None,
                       executor: Executor | None = None) -> Report:
    """`actstat coord-check`: the config's model (the built-in MLP, or a factory's with
    coord_check.width_arg) at every width of coord_check, trained and measured; the Report's
    `coord_check` holds the sizes, slopes, flags and verdict (its `runs` are empty)."""
    _check_request(config)
    seeds = tuple(config.seed + k for k in range(config.coord_check.seeds))
    return _report(Plan(config, seeds), on_progress, executor)


def _check_request(config: Config) -> None:
    cc = config.coord_check
    if config.model.factory is not None:
        if cc.width_arg is None:
            raise ConfigError("coord-check with --model needs --width-arg NAME: the factory's "
                              "keyword argument that sets its width (d_model, channels)")
        if cc.param == "mup":
            raise ConfigError("--param mup applies μP to the built-in MLP; a factory's model "
                              "keeps its own parameterisation: μP it with the mup package "
                              "(set_base_shapes, MuReadout) and its optimisers are used "
                              "(docs/coord-check.md)")
    elif cc.width_arg is not None:
        raise ConfigError("--width-arg names a model factory's width argument: give --model too")
    if len(config.init) + len(config.compare) != 1 or (
            config.model.factory is None and len(config.activation) != 1):
        raise ConfigError("coord-check follows one scheme: give one --init and one --act "
                          "(no compare: list)")
    if config.model.factory is None and isinstance(config.model.width, list):
        raise ConfigError("coord-check sets the width itself (--widths): give model.width as "
                          "one number, or leave it out")


def _report(plan: Plan, on_progress: CoordProgress | None, executor: Executor | None) -> Report:
    cc = plan.config.coord_check
    if plan.inputs is None and plan.config.model.factory is None:
        plan = replace(plan, pool=_pool(plan.config, None))
    run: Callable[[int], WidthRun] = partial(measure_width, plan)
    if executor is None:
        executor = InProcess()
        run = partial(measure_width, plan, on_progress=on_progress)
    runs = list(executor.map(run, list(cc.widths)))
    thresholds = plan.config.thresholds
    record = analyse(runs, plan, thresholds)
    device = resolve_device(plan.config.device) if plan.inputs is None else plan.inputs.device
    inputs, labelled, source = _pool_description(plan)
    config = plan.config.model_dump(mode="json")
    report = assemble(config, device, input_stats(inputs, source=source, labelled=labelled), [])
    return replace(report, coord_check=record)


def _pool_description(plan: Plan) -> tuple[torch.Tensor, bool, str]:
    if plan.inputs is not None:
        return plan.inputs, plan.targets is not None, "tensors passed to actstat.coord_check"
    pool = plan.pool if plan.pool is not None else _pool(plan.config, None)
    return pool.inputs, pool.labelled, pool.description


def _pool(config: Config, model: nn.Module | None) -> Any:
    shape = None if model is None else partial(sample_shape_for, model,
                                               source=config.data.source)
    pool = load_pool(config.data, seed=config.seed, device=resolve_device(config.device),
                     dtype=resolve_dtype(config.dtype), num_classes=config.model.num_classes,
                     shape=shape)
    if config.coord_check.batch_size > pool.inputs.shape[0]:
        raise DataError(f"coord_check.batch_size {config.coord_check.batch_size} is more than "
                        f"the {pool.inputs.shape[0]} samples of {pool.description}; use "
                        f"--train-batch {pool.inputs.shape[0]} or fewer")
    return pool


# -- one width --------------------------------------------------------------------------------


def measure_width(plan: Plan, width: int, on_progress: CoordProgress | None = None) -> WidthRun:
    """Every seed's copy of the model at `width`, trained by plan's schedule and measured at
    each step. An executor's task: everything it needs is in `plan` and `width`."""
    config = plan.config
    cc = config.coord_check
    schedule = plan.schedule
    try:
        if plan.factory is not None:
            models = [_seeded(lambda: plan.factory(width), seed) for seed in plan.seeds]
        elif config.model.factory is not None:
            models = [_factory_model(config, width, seed) for seed in plan.seeds]
        else:
            models = None
    except ActstatError as error:
        raise CoordCheckError(f"width {width}: {error}") from error
    except Exception as error:
        raise CoordCheckError(f"width {width}: the model factory raised {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from error
    keyword = None  # a factory's model that takes its inputs by keyword (input_ids=)
    step = None if on_progress is None else (
        lambda done, total, _loss: on_progress(width, plan.seeds, done - 1, total - 1))
    if plan.inputs is not None:
        inputs, targets, labelled = plan.inputs, plan.targets, plan.targets is not None
        assert models is not None
        models = [m.to(inputs.device) for m in models]
    else:
        pool = plan.pool if plan.pool is not None else _pool(config, models[0] if models else None)
        inputs, targets, labelled = pool.inputs, pool.labels, pool.labelled
        causal = False
        if models is not None:  # a factory's: its loss and how it takes its inputs, as `train`'s
            models = [m.to(device=inputs.device, dtype=resolve_dtype(config.dtype))
                      for m in models]
            targets, chosen = model_loss(models[0], pool, config.seed)
            causal = chosen is next_token_loss
            fed = model_inputs(models[0], inputs[:1])
            keyword = next(iter(fed)) if isinstance(fed, dict) else None
    loss = plan.loss or (training_loss(labelled, config.model.output, causal=causal)
                         if plan.inputs is None else _api_loss)
    if targets is None:  # the API without targets: the loss is the output's sum
        loss = plan.loss or _output_sum
        targets = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    options: dict[str, Any] = {"loss": loss, "labelled": labelled,
                               "near_zero": config.thresholds.near_zero,
                               "saturation_cut": config.thresholds.saturation_cut,
                               "on_step": step}
    if models is not None:  # a user's model: its own parameterisation, its own optimiser
        optimiser = partial(_own_optimiser, cc.optimizer, cc.lr, schedule.momentum,
                            plan.optimiser)
        trajectories = [_watched(partial(watch, model, inputs, targets, schedule,
                                         optimiser=optimiser, output=config.model.output,
                                         keyword=keyword, **options), width)
                        for model in models]
    else:
        trajectories = _built_in(config, width, plan.seeds, inputs, targets, schedule, options)
    return _width_run(width, trajectories, cc.steps)


def _watched(train: Callable[[], Any], width: int) -> Any:
    try:
        return train()
    except ActstatError as error:
        raise CoordCheckError(f"width {width}: {error}") from error


def _built_in(config: Config, width: int, seeds: Sequence[int], inputs: torch.Tensor,
              targets: torch.Tensor, schedule: Schedule, options: dict[str, Any]
              ) -> list[Trajectory]:
    """The built-in model's copies at `width`, initialised by the scheme (its weights those of
    `run` at that width and seed), made `param`'s, trained: the plain MLP's seeds side by side
    as one stacked model, any other one by one."""
    cc = config.coord_check
    init, act = config.init[0], config.activation[0]
    device, dtype = inputs.device, inputs.dtype
    features = inputs.shape[1]
    base = cc.base_width or min(cc.widths)

    def at(w: int, seed: int = config.seed) -> Config:
        return config.model_copy(update={"model": config.model.model_copy(update={"width": w}),
                                         "seed": seed})

    by_name = kinds(shapes(uninitialised(at(base), init, act, features)),
                    shapes(uninitialised(at(2 * base), init, act, features)))
    ratio = width / base
    models = []
    for seed in seeds:
        model = initialised(at(width, seed), init, act, device, dtype, features)
        if init.name != KEEP:
            data_init(model, inputs[:config.data.batch_size], make_init(init.name, init.params),
                      seed)
        apply(model, cc.param, by_name, ratio)
        models.append(model)
    rates = learning_rates(cc.param, cc.optimizer, list(by_name.values()), cc.lr, ratio)
    optimiser: Optimiser = partial(_grouped_optimiser, cc.optimizer, rates, schedule.momentum)
    numbered = config.model.plain_mlp
    if numbered and len(models) > 1:
        stacked = stack_mlps(models)
        return _watched(partial(watch_stacked, stacked, inputs, targets, schedule,
                                groups=len(models), numbered=True, optimiser=optimiser,
                                **options), width)
    return [_watched(partial(watch, model, inputs, targets, schedule, numbered=numbered,
                             optimiser=optimiser, **options), width) for model in models]


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    if not isinstance(model, nn.Module):
        raise ModelError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    return model


def _factory_model(config: Config, width: int, seed: int) -> nn.Module:
    """The factory's model at `width` as `run` makes it (seeded; re-initialised by the
    config's init unless it is `keep`)."""
    assert config.model.factory is not None and config.coord_check.width_arg is not None
    kwargs = {**config.model.kwargs, config.coord_check.width_arg: width}
    at = config.model_copy(update={"model": config.model.model_copy(update={"kwargs": kwargs}),
                                   "seed": seed})
    return factory_model(at, config.init[0])


def _grouped_optimiser(optimizer: str, rates: Sequence[float], momentum: float,
                       model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(list(model.parameters()), rates)
    if optimizer == "adam":
        return torch.optim.Adam(groups, betas=(momentum, 0.999))
    return torch.optim.SGD(groups, momentum=momentum)


def _own_optimiser(optimizer: str, lr: float, momentum: float, given: OptimiserFactory | None,
                   model: nn.Module) -> torch.optim.Optimizer:
    """A user's model's optimiser: the factory given (the API's `optimiser`); the mup package's
    MuAdam or MuSGD where its base shapes are set (parameters with an `infshape`); else
    torch's own, one learning rate."""
    if given is not None:
        return given(model, lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if any(hasattr(p, "infshape") for p in params):
        try:
            from mup import MuAdam, MuSGD
        except ImportError:
            raise ConfigError("the model's parameters carry mup base shapes (infshape) but the "
                              "mup package does not import: pip install --no-deps mup") from None
        if optimizer == "adam":
            return MuAdam(params, lr=lr, betas=(momentum, 0.999))
        return MuSGD(params, lr=lr, momentum=momentum)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999))
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _output_sum(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    return out.float().sum()


def _api_loss(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = out.reshape(-1, out.shape[-1]) if out.dim() > 2 else out
    return cross_entropy(logits, targets.reshape(-1) if out.dim() > 2 else targets)


def _width_run(width: int, trajectories: Sequence[Trajectory], steps: int) -> WidthRun:
    """A width's trajectories as sizes [row][step][seed] over steps 0..steps (None where a
    seed stopped before)."""
    first = trajectories[0]
    names = tuple(layer.name for layer in first.layers)
    count = steps + 1

    def column(values: Sequence[float | None] | None, recorded: Sequence[int]) -> list:
        at = dict(zip(recorded, values or ()))
        return [finite_or_none(at.get(step)) for step in range(count)]

    sizes = []
    for j in range(len(names)):
        per_seed = []
        for t in trajectories:
            if tuple(layer.name for layer in t.layers) != names:
                raise ModelError(f"width {width}: the copies ran different layers")
            per_seed.append(column(t.layers[j].abs_mean, t.steps))
        sizes.append(tuple(tuple(seeds) for seeds in zip(*per_seed)))
    loss = tuple(tuple(seeds) for seeds in zip(*(column(t.loss, t.steps) for t in trajectories)))
    stopped = tuple(t.stopped_at if t.stopped == "nonfinite" else None for t in trajectories)
    return WidthRun(width, names, tuple(sizes), loss, stopped)


# -- across widths ----------------------------------------------------------------------------


def slope(widths: Sequence[float], sizes: Sequence[float | None]) -> float | None:
    """The least-squares slope of ln(size) against ln(width); None unless every size is a
    positive number."""
    if any(s is None or not s > 0 or not math.isfinite(s) for s in sizes):
        return None
    x = [math.log(w) for w in widths]
    y = [math.log(s) for s in sizes]  # type: ignore[arg-type]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return (sum((a - mx) * (b - my) for a, b in zip(x, y))
            / sum((a - mx) ** 2 for a in x))


def analyse(runs: Sequence[WidthRun], plan: Plan, thresholds: Thresholds) -> CoordCheck:
    """The widths' runs -> each layer's slopes, spread and flags, the events and the verdict."""
    cc = plan.config.coord_check
    names = runs[0].names
    for run in runs[1:]:
        if run.names != names:
            raise CoordCheckError(
                f"the model runs other layers at width {run.width} ({len(run.names)} rows) than "
                f"at width {runs[0].width} ({len(names)}): a width must change sizes only")
    widths = [run.width for run in runs]
    steps = tuple(range(cc.steps + 1))
    limit = thresholds.width_slope
    layers = []
    for j, name in enumerate(names):
        slopes, spreads, flags, first = [], [], [], None
        for step in steps:
            per_seed = [slope(widths, [run.sizes[j][step][k] for run in runs])
                        for k in range(len(plan.seeds))]
            if any(s is None for s in per_seed):
                slopes.append(None)
                spreads.append(None)
                continue
            mean = sum(per_seed) / len(per_seed)  # type: ignore[arg-type]
            spread = math.sqrt(sum((s - mean) ** 2 for s in per_seed)  # type: ignore[operator]
                               / len(per_seed))
            slopes.append(mean)
            spreads.append(spread)
            flag = ("grows_with_width" if mean > limit else
                    "shrinks_with_width" if mean < -limit else None)
            if flag is not None:
                first = step if first is None else first
                if flag not in flags:
                    flags.append(flag)
        layers.append(CoordLayer(
            name=name, sizes=tuple(run.sizes[j] for run in runs), slope=tuple(slopes),
            spread=tuple(spreads), flags=tuple(f for f in WIDTH_FLAGS if f in flags),
            first_step=first))
    present = {flag for layer in layers for flag in layer.flags}
    events = tuple(Event(kind="nonfinite_loss", step=step, layer=f"width {run.width}, seed {seed}")
                   for run in runs for seed, step in zip(plan.seeds, run.stopped)
                   if step is not None)
    param = ("own" if plan.factory is not None or plan.config.model.factory is not None
             else cc.param)
    return CoordCheck(
        param=param, optimizer=cc.optimizer, lr=cc.lr,
        base_width=(cc.base_width or min(cc.widths)) if param == "mup" else None,
        widths=tuple(widths), steps=steps, seeds=plan.seeds, batch_size=cc.batch_size,
        threshold=limit, layers=tuple(layers), loss=tuple(run.loss for run in runs),
        verdict=next((flag for flag in WIDTH_FLAGS if flag in present), WIDTH_STABLE),
        events=events, model=plan.config.model.factory)


def coord_check(factory: Callable[[int], nn.Module], widths: Sequence[int], inputs: torch.Tensor,
                targets: torch.Tensor | None = None, *, steps: int = 4, seeds: int = 3,
                seed: int = 0, optimizer: str = "adam", lr: float = 1e-2, batch_size: int = 256,
                optimiser: OptimiserFactory | None = None,
                loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                thresholds: Thresholds | Mapping[str, float] | None = None,
                executor: Executor | None = None,
                on_progress: CoordProgress | None = None) -> Report:
    """The coordinate check of any model (the Python API; docs/python-api.md): `factory(width)`
    makes the model at a width (called under torch.manual_seed(seed + k) for copy k), trained
    for `steps` updates on mini-batches of `batch_size` drawn from `inputs`/`targets` (the same
    for every width and copy), measured at init and after each update. The optimiser: `optimiser
    (model, lr)` when given (a μP'd model's mup.MuAdam), the mup package's where the model's
    base shapes are set, else torch's `optimizer` ("adam" or "sgd") at `lr`. The loss:
    `loss(output, targets)`, else cross-entropy against `targets`, else the output's sum.
    Returns the Report whose `coord_check` holds every size and slope (`report.coord_check`)."""
    from actstat.config import config_from_dict, thresholds_from

    if not callable(factory):
        raise ConfigError(f"coord_check() takes a factory of a width, got {type(factory).__name__}")
    if not isinstance(inputs, torch.Tensor):
        raise ConfigError("coord_check(): inputs must be a tensor of samples")
    limits = thresholds_from(thresholds)
    config = config_from_dict({
        "seed": seed, "thresholds": limits.model_dump(mode="json"),
        "coord_check": {"widths": list(widths), "steps": steps, "seeds": seeds,
                        "optimizer": optimizer, "lr": lr, "batch_size": batch_size},
        "data": {"batch_size": min(batch_size, 1000)}}, "coord_check()")
    if batch_size > inputs.shape[0]:
        raise DataError(f"batch_size {batch_size} is more than the {inputs.shape[0]} samples "
                        "given")
    plan = Plan(config, tuple(seed + k for k in range(seeds)), factory=factory, inputs=inputs,
                targets=targets, loss=loss, optimiser=optimiser)
    report = _report(plan, on_progress, executor)
    return replace(report, config={"source": "actstat.coord_check",
                                   "thresholds": limits.model_dump(mode="json"),
                                   "coord_check": config.coord_check.model_dump(mode="json")})
