"""Training: `actstat train`: a Config -> a Report whose runs carry their trajectories (each
scheme measured at init as `run` measures it, then trained by actstat/watch.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from actstat.analysis import (
    analyse_trajectory,
)
from actstat.build import data_init, initialised
from actstat.capture import (
    select_output,
)
from actstat.config import (
    DEFAULT_TRAIN_STEPS,
    KEEP,
    Config,
)
from actstat.data import (
    Batch,
    load_batch,
    load_pool,
    resolve_device,
    resolve_dtype,
    sample_shape_for,
)
from actstat.errors import DataError
from actstat.inits import (
    make_init,
)
from actstat.model import (
    stack_mlps,
)
from actstat.pipeline import (
    drawn_target_loss,
    drawn_targets_fit,
    model_inputs,
    model_loss,
    named_model_preflight,
    next_token_loss,
    profile,
)
from actstat.plan import Progress, model_groups, model_tag, schemes, stacks, train_stack_size
from actstat.records import (
    Run,
    Trajectory,
)
from actstat.reduce import HIST_BINS, cross_entropy
from actstat.report import Report
from actstat.watch import Schedule, StepProgress, StepRecord, watch, watch_stacked


def watch_report(config: Config, on_scheme: Progress | None = None,
                 on_step: Callable[[str], StepProgress] | None = None, *,
                 stack: int | None = None,
                 on_record: Callable[[str], StepRecord] | None = None,
                 force: bool = False) -> Report:
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
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    if not force:  # a model by name: its weights, gradients and the optimiser's state
        named_model_preflight(config, device, dtype,
                              copies=4 if t.optimizer == "adam" else 3 if t.beta else 2)
    # the measurement at init as `run` makes it, without run's one-batch training probe
    report = profile(config.model_copy(update={"train": t.model_copy(update={"steps": 0})}),
                     on_scheme, force=force)
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
        targets, chosen = (model_loss(models[0], pool, config.seed)
                           if config.model.factory is not None else (pool.labels, None))
        loss = training_loss(pool.labelled, config.model.output,
                              causal=chosen is next_token_loss)
        options = {"loss": loss, "labelled": pool.labelled, "near_zero": config.thresholds.near_zero,
                   "saturation_cut": config.thresholds.saturation_cut,
                   "bins": HIST_BINS if config.hist else 0,
                   # the plain MLP's rows as its tables number them: 1 to L, then `head`
                   "numbered": report.runs[group[0]].model is None and config.model.plain_mlp,
                   "on_step": None if on_step is None else on_step(
                       ", ".join(report.runs[index].scheme for index in group))}
        records = [None if on_record is None else on_record(report.runs[index].scheme)
                   for index in group]
        if len(models) == 1:
            fed = model_inputs(models[0], pool.inputs[:1])
            trained = [watch(models[0], pool.inputs, targets, schedule, on_record=records[0],
                             output=config.model.output,
                             keyword=next(iter(fed)) if isinstance(fed, dict) else None,
                             **options)]
        else:
            stacked = stack_mlps(models)
            trained = watch_stacked(stacked, pool.inputs, targets, schedule,
                                    groups=len(models), on_record=records, **options)
            del stacked
        # chance level: the loss of logits that know nothing (ln of their classes)
        trained = [replace(t, chance_loss=loss.chance) for t in trained]
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


class _TrainingLoss:
    """Cross-entropy against the labels (drawn targets where there are none:
    `drawn_target_loss`; a causal language model's next token on token ids: `next_token_loss`)
    of the output's tensor that `model.output` selects. `chance`: the loss of logits that know
    nothing, ln(classes), once a cross-entropy has been taken (None for the output's sum)."""

    def __init__(self, labelled: bool, output: int | str | None, causal: bool):
        self.labelled, self.output, self.causal = labelled, output, causal
        self.chance: float | None = None

    def __call__(self, out: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = select_output(out, self.output)
        if self.causal:
            value = next_token_loss(logits, targets)
        elif self.labelled:
            value = cross_entropy(logits, targets)
        elif drawn_targets_fit(logits, targets):
            value = cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        else:
            return drawn_target_loss(logits, targets)  # the output's sum: no chance level
        if self.chance is None and logits.shape[-1] > 1:
            self.chance = math.log(logits.shape[-1])
        return value


def training_loss(labelled: bool, output: int | str | None, *,
                  causal: bool = False) -> _TrainingLoss:
    return _TrainingLoss(labelled, output, causal)
