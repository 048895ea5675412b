"""Watch: train a model on mini-batches and record, every `every` steps, each watched layer's
statistics (fastai's ActivationStats, in a terminal): the mean, std and near-zero fraction of its
output, its dead fraction, the std of the gradient at it, and optionally a histogram.

Recorded step s is the forward and backward pass of mini-batch s, before update s: step 0 is the
network at init. Steps 0, every, 2·every, ... are recorded, and the last step too. Definitions
of the statistics are those of the single-pass probe (actstat/analysis.py); what is new here:

- **dead**: the fraction of a layer's units (a conv map's channels) that are 0 for every sample
  of that step's mini-batch (so on 64 samples a unit reads dead more easily than on the probe's
  1,000: compare trajectories at one batch size).
- **histogram**: counts in `bins` equal bins over a range fixed per layer at step 0 (the
  activation's range where it has one: tanh's [-1, 1]; otherwise step 0's [min, max] widened by
  half its span on each unbounded side, and from 0 where step 0 has no negative value). Values
  outside the range count in the end bins, so every value is counted at every step.
- **loss** and **accuracy** (with labels): of the mini-batch at that step.

Statistics are reduced on the device inside the hooks (an in-place op after a module cannot
overwrite what was measured) and copied to the host once per recorded step, into a buffer
allocated up front for every recorded step: memory is sized by recorded steps × layers × bins
and does not grow while the run goes on. On a GPU nothing waits for the device inside a step;
the host reads the loss once per recorded step, after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from actstat import fused
from actstat.capture import (
    NORM_TYPES,
    bounded_activation,
    first_tensor,
    is_weight_layer,
    preserved,
    repeated_blocks,
)
from actstat.model import StackedLinear
from actstat.probe import Scratch, group_mean_std, group_moments
from actstat.report import Trajectory, TrajectoryLayer

OPTIMIZERS = ("sgd", "adam")
# the statistics recorded per layer and step, in buffer order
LAYER_STATS = ("mean", "std", "near_zero", "dead", "grad_std")
HIST_WIDEN = 0.5  # an unbounded side of the histogram's range: step 0's span times this, added


@dataclass(frozen=True)
class Watched:
    """One recorded layer: `post`'s output is its tensor; the gradient at `pre`'s output (the
    Linear before an activation: dL/d(pre), as in the probe) is its gradient, or at `post`'s own
    output when `pre` is None. `bounds`: the activation's range (None: unbounded that side)."""

    name: str
    post: nn.Module
    pre: nn.Module | None = None
    can_die: bool = True
    bounds: tuple[float | None, float | None] = (None, None)


@dataclass(frozen=True)
class Schedule:
    """How to train: `steps` updates of `optimizer` on mini-batches of `batch_size`, the learning
    rate ramped linearly over the first `warmup` steps, statistics recorded every `every` steps."""

    steps: int
    every: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0  # sgd: heavy-ball momentum; adam: β₁
    warmup: int = 0
    seed: int = 0

    def recorded(self) -> list[int]:
        """The steps whose statistics are kept: every `every`-th, and the last."""
        steps = list(range(0, self.steps, self.every))
        if steps[-1] != self.steps - 1:
            steps.append(self.steps - 1)
        return steps

    def lr_at(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# called after every step the host knows the loss of: (steps done, steps in all, the loss)
StepProgress = Callable[[int, int, float], None]
# called with each recorded step as it is recorded: a Trajectory of that one step (no events)
StepRecord = Callable[[Trajectory], None]


def watch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, layers: Sequence[Watched],
          schedule: Schedule, loss: Loss, *, labelled: bool, near_zero: float, bins: int = 0,
          on_step: StepProgress | None = None, on_record: StepRecord | None = None) -> Trajectory:
    """Train `model` (in train mode; left in the mode it was in) on mini-batches drawn from
    `inputs`/`targets` in a seeded order, epoch after epoch, recording `layers` as `schedule`
    says. A non-finite loss stops the run at that step (`stopped` "nonfinite"), Ctrl-C at the
    step it came in ("interrupted"); both keep every step recorded before. Events and the
    verdict are left to actstat/analysis.py."""
    return _train(model, inputs, targets, layers, schedule, loss, groups=0, labelled=labelled,
                  near_zero=near_zero, bins=bins, on_step=on_step, on_record=[on_record])[0]


def watch_stacked(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  layers: Sequence[Watched], schedule: Schedule, loss: Loss, *, labelled: bool,
                  near_zero: float, bins: int = 0, on_step: StepProgress | None = None,
                  on_record: Sequence[StepRecord | None] | None = None) -> list[Trajectory]:
    """`watch` for K plain MLPs trained side by side as one stacked model (actstat.model
    .stack_mlps: every layer's output is (K, batch, units)): one Trajectory per model, in stack
    order, with the numbers that K separate `watch` runs give (to float rounding: a batched
    matmul sums in its own order). Every model sees the same mini-batches; the loss backward is
    the sum of the K models' losses (`loss` of each one's logits), whose gradient for each
    model's parameters is that model's own, and SGD and Adam update each element from its own
    gradient and state alone, so one step of the stack is K separate steps. A model whose loss
    goes non-finite stops there, as on its own; its NaNs stay in its own slice of every tensor
    (nothing in the forward or backward mixes the K slices), and the others train on. `on_step`
    gets the loss of the first model still training; `on_record[k]`, if any, model k's recorded
    steps."""
    groups = next(m for m in model.modules() if isinstance(m, StackedLinear)).groups
    return _train(model, inputs, targets, layers, schedule, loss, groups=groups,
                  labelled=labelled, near_zero=near_zero, bins=bins, on_step=on_step,
                  on_record=on_record)


def _train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
           layers: Sequence[Watched], schedule: Schedule, loss: Loss, *, groups: int,
           labelled: bool, near_zero: float, bins: int, on_step: StepProgress | None,
           on_record: Sequence[StepRecord | None] | None = None) -> list[Trajectory]:
    """groups: 0 for one model, K for a stack of K. The host buffer holds, per recorded step,
    one row of numbers per model: one copy per recorded step for the whole stack."""
    k = max(groups, 1)
    recorder = _Recorder(layers, groups=groups, near_zero=near_zero, bins=bins,
                         labelled=labelled)
    recorded = schedule.recorded()
    host = torch.full((len(recorded), k, recorder.width), float("nan"), dtype=torch.float64,
                      pin_memory=_pinned(inputs.device))
    optimiser = _optimiser(model, schedule)
    order = _Order(inputs.shape[0], schedule.batch_size, schedule.seed, inputs.device)
    device_is_cpu = inputs.device.type == "cpu"
    was_training = model.training
    model.train()
    # per model: how many recorded rows are its own, why and where it stopped, and the row of
    # loss alone of a step that stopped it between recorded steps
    kept = [0] * k
    stopped: list[str | None] = [None] * k
    stopped_at: list[int | None] = [None] * k
    last: list[tuple[int, list[float]] | None] = [None] * k
    slot, step = 0, 0
    try:
        with recorder.hooks():
            for step in range(schedule.steps):
                rows = order.next()
                x, y = inputs[rows], targets[rows]
                recording = slot < len(recorded) and recorded[slot] == step
                recorder.recording = recording
                for group in optimiser.param_groups:
                    group["lr"] = schedule.lr_at(step)
                optimiser.zero_grad(set_to_none=True)
                out = model(x)
                if groups:
                    values = torch.stack([loss(out[j], y) for j in range(groups)])
                    values.sum().backward()
                else:
                    value = loss(out, y)
                    value.backward()
                    values = value.reshape(1)
                known = None
                if recording:
                    host[slot].copy_(recorder.rows(values.detach(), out.detach(), y),
                                     non_blocking=not device_is_cpu)
                    if not device_is_cpu:
                        torch.cuda.synchronize(inputs.device)  # after the step, not inside it
                    known = host[slot, :, 0].tolist()
                    for j, record in enumerate(on_record or ()):
                        if record is not None and stopped[j] is None:
                            record(recorder.trajectory(j, [step], [host[slot, j].tolist()],
                                                       schedule, None, None))
                    slot += 1
                    for j in range(k):
                        if stopped[j] is None:
                            kept[j] = slot
                elif device_is_cpu:
                    known = values.detach().tolist()
                if known is not None:
                    for j in range(k):
                        if stopped[j] is None and not _finite(known[j]):
                            stopped[j], stopped_at[j] = "nonfinite", step
                            if not recording:  # keep the step that went non-finite, its loss
                                last[j] = (step, recorder.row_of_loss(known[j]))
                    if all(why is not None for why in stopped):
                        break
                optimiser.step()
                if on_step is not None and known is not None:
                    on_step(step + 1, schedule.steps,
                            next(known[j] for j in range(k) if stopped[j] is None))
    except KeyboardInterrupt:
        for j in range(k):
            if stopped[j] is None:
                stopped[j], stopped_at[j] = "interrupted", step
    finally:
        model.train(was_training)
        optimiser.zero_grad(set_to_none=True)
    values_of = host.tolist()
    trajectories = []
    for j in range(k):
        steps = recorded[:kept[j]]
        numbers = [values_of[r][j] for r in range(kept[j])]
        if last[j] is not None:
            steps = [*steps, last[j][0]]
            numbers = [*numbers, last[j][1]]
        trajectories.append(recorder.trajectory(j, steps, numbers, schedule, stopped[j],
                                                stopped_at[j]))
    return trajectories


class _Recorder:
    """The hooks of a watched run and the device rows they fill at a recorded step, one per
    model of a stack (one for a model alone): [loss, accuracy, then per layer LAYER_STATS, then
    per layer `bins` counts]. `groups`: 0 for one model, K for a stack of K, whose every
    watched tensor is (K, batch, ...) and is reduced per model."""

    def __init__(self, layers: Sequence[Watched], *, groups: int, near_zero: float, bins: int,
                 labelled: bool):
        self.layers = list(layers)
        self.groups = groups
        self.k = max(groups, 1)
        self.near_zero = near_zero
        self.bins = bins
        self.labelled = labelled
        self.recording = False
        self.width = 2 + len(self.layers) * (len(LAYER_STATS) + bins)
        # per layer: device vectors of K values, or the C kernel's host floats
        self.stats: list[list[torch.Tensor | list[float]] | None] = [None] * len(self.layers)
        self.grads: list[torch.Tensor | list[float] | None] = [None] * len(self.layers)
        self.hists: list[torch.Tensor | list[list[float]] | None] = [None] * len(self.layers)
        # per layer, each model's histogram range
        self.ranges: list[list[tuple[float, float]] | None] = [None] * len(self.layers)
        self.scratch = Scratch()  # one buffer for every pass's scaled copies and masks

    def hooks(self) -> _Hooks:
        return _Hooks(self)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.groups else x.unsqueeze(0)

    def on_post(self, j: int, out: object) -> None:
        if not self.recording:
            return
        x = first_tensor(out)
        if x is None:
            return
        with torch.no_grad():
            x = self._grouped(x.detach())
            numbers = fused.reduce_groups(x, near_zero=self.near_zero,
                                          units=self.layers[j].can_die)
            if numbers is not None:
                # mean, std, min, max, near-zero count, -, -, dead fraction (NaN: not counted);
                # kept as Python floats until the step's rows (probe._Reducer says why)
                mean, std, lo, hi, small, _, _, dead = (list(c) for c in zip(*numbers))
                count = x[0].numel()
                self.stats[j] = [mean, std, [n / count for n in small], dead]
                if self.bins:  # the histogram's range
                    lo, hi = torch.tensor(lo, dtype=x.dtype), torch.tensor(hi, dtype=x.dtype)
            # the extremes come out of the dead units' per-unit pass where there is one: the
            # moments then need no min/max pass of their own (benchmarks/train.py)
            elif self.layers[j].can_die:
                dead, lo, hi = _dead(x)
            else:
                flat = x.reshape(x.shape[0], -1)
                lo, hi = flat.amin(dim=1), flat.amax(dim=1)
                dead = torch.full(lo.shape, float("nan"), dtype=torch.float64, device=x.device)
            if numbers is None:
                mean, std, _, _, near = group_moments(x, self.near_zero, self.scratch(x),
                                                      (lo, hi))
                self.stats[j] = [mean, std, near, dead]
            if self.bins:
                hist = self._histogram(j, x, lo, hi)
                self.hists[j] = hist.tolist() if numbers is not None else hist  # (a CPU one)
        if self.layers[j].pre is None:
            self._grad_hook(j, first_tensor(out))

    def on_pre(self, j: int, out: object) -> None:
        if self.recording:
            self._grad_hook(j, first_tensor(out))

    def _grad_hook(self, j: int, x: torch.Tensor | None) -> None:
        if x is not None and x.requires_grad:
            x.register_hook(lambda g, j=j: self._on_grad(j, g))

    def _on_grad(self, j: int, g: torch.Tensor) -> None:
        with torch.no_grad():  # the std alone: no near-zero count
            g = self._grouped(g.detach())
            numbers = fused.reduce_groups(g, near_zero=self.near_zero, units=False)
            if numbers is not None:
                self.grads[j] = [n[1] for n in numbers]
                return
            flat = g.reshape(g.shape[0], -1)
            self.grads[j] = group_mean_std(g, flat.amin(dim=1), flat.amax(dim=1),
                                           self.scratch(g))[1]

    def _histogram(self, j: int, x: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor) -> torch.Tensor:
        """(K, bins) counts, each model's over its own range."""
        if self.ranges[j] is None:  # step 0 sets the ranges (one host read, once per layer)
            bounds = self.layers[j].bounds
            self.ranges[j] = [_hist_range(bounds, low, high)
                              for low, high in zip(lo.tolist(), hi.tolist())]
        return torch.stack([self._counts(group, low, high)
                            for group, (low, high) in zip(x, self.ranges[j])])

    def _counts(self, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        """`bins` counts of x over [low, high], values outside in the end bins."""
        # binned in float32 (as torch.histc was, whatever x's dtype); a float32 x is clamped
        # into the scratch buffer (no allocation per step)
        values = (torch.clamp(x.reshape(-1), low, high, out=self.scratch(x))
                  if x.dtype == torch.float32 else x.reshape(-1).float().clamp_(low, high))
        if values.device.type != "cpu":  # bincount there reads its input's max: a host sync
            return torch.histc(values, self.bins, low, high).to(torch.float64)
        # torch.histc's own bin of each value (its CPU kernel: (v - low) * bins / (high - low),
        # in the values' dtype, truncated; high in the last bin), counted by bincount: 4x
        # faster than histc's CPU loop (benchmarks/train.py), the same counts. NaN counts nowhere
        lo, hi = (torch.tensor(v, dtype=values.dtype) for v in (low, high))
        index = values.sub_(lo).mul_(self.bins).div_(hi - lo).clamp_(0, self.bins - 1)
        index = index.nan_to_num_(nan=self.bins).to(torch.long)
        return torch.bincount(index, minlength=self.bins + 1)[:self.bins].to(torch.float64)

    def rows(self, losses: torch.Tensor, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """This recorded step's numbers as a (K, width) float64 device matrix; the parts
        reset."""
        f64 = torch.float64
        k = self.k
        nan = torch.full((k,), float("nan"), dtype=f64, device=losses.device)
        out = self._grouped(out)
        accuracy = nan
        if self.labelled and out.dim() >= 3 and out.shape[1:-1] == targets.shape:
            accuracy = (out.argmax(dim=-1) == targets).to(f64).flatten(1).mean(dim=1)
        parts = [losses.to(f64), accuracy]
        for j in range(len(self.layers)):
            stats = self.stats[j] or [nan] * (len(LAYER_STATS) - 1)
            grad = self.grads[j] if self.grads[j] is not None else nan
            parts += [torch.as_tensor(s, dtype=f64, device=losses.device).reshape(k)
                      for s in [*stats, grad]]
        matrix = torch.stack(parts, dim=1)
        if self.bins:
            empty = torch.full((k, self.bins), float("nan"), dtype=f64, device=losses.device)
            hists = [torch.as_tensor(h, dtype=f64, device=losses.device) if h is not None
                     else empty for h in self.hists]
            matrix = torch.cat([matrix, *hists], dim=1)
        self.stats = [None] * len(self.layers)
        self.grads = [None] * len(self.layers)
        self.hists = [None] * len(self.layers)
        return matrix

    def row_of_loss(self, loss: float) -> list[float]:
        """A step that was not recorded but stopped the run: its loss, the rest NaN."""
        return [loss] + [float("nan")] * (self.width - 1)

    def trajectory(self, group: int, steps: list[int], host: list[list[float]],
                   schedule: Schedule, stopped: str | None,
                   stopped_at: int | None) -> Trajectory:
        """Model `group`'s trajectory from its rows."""
        n = len(LAYER_STATS)
        per_layer = []
        for j, layer in enumerate(self.layers):
            base = 2 + j * n
            columns = [tuple(_number(row[base + k]) for row in host) for k in range(n)]
            histogram = None
            ranges = self.ranges[j]
            if self.bins and ranges is not None:
                start = 2 + len(self.layers) * n + j * self.bins
                histogram = tuple(tuple(int(c) if _finite(c) else 0
                                        for c in row[start:start + self.bins]) for row in host)
            per_layer.append(TrajectoryLayer(
                name=layer.name, mean=columns[0], std=columns[1], near_zero=columns[2],
                dead=columns[3] if layer.can_die else None, grad_std=columns[4],
                hist_range=ranges[group] if histogram is not None else None,
                histogram=histogram))
        accuracy = tuple(_number(row[1]) for row in host)
        return Trajectory(
            steps=tuple(steps), loss=tuple(_number(row[0]) for row in host),
            accuracy=accuracy if self.labelled else None, layers=tuple(per_layer),
            planned_steps=schedule.steps, every=schedule.every, batch_size=schedule.batch_size,
            optimizer=schedule.optimizer, lr=schedule.lr, momentum=schedule.momentum,
            warmup=schedule.warmup, stopped=stopped, stopped_at=stopped_at)


class _Hooks:
    """A forward hook on each watched module (and its `pre`), removed whatever happens."""

    def __init__(self, recorder: _Recorder):
        self.recorder = recorder
        self.handles: list = []

    def __enter__(self) -> _Recorder:
        for j, layer in enumerate(self.recorder.layers):
            self.handles.append(layer.post.register_forward_hook(
                lambda _m, _a, out, j=j: self.recorder.on_post(j, out)))
            if layer.pre is not None:
                self.handles.append(layer.pre.register_forward_hook(
                    lambda _m, _a, out, j=j: self.recorder.on_pre(j, out)))
        return self.recorder

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class _Order:
    """Mini-batch rows: a seeded permutation of the pool per epoch (drawn on the CPU, so that
    every device trains on the same batches), cut into full batches, on `device`."""

    def __init__(self, count: int, batch_size: int, seed: int,
                 device: torch.device | None = None):
        self.count, self.batch_size = count, batch_size
        self.device = device or torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self.rows = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self.rows.numel() < self.batch_size:
            rows = torch.randperm(self.count, generator=self.generator)
            if self.device.type == "cuda":
                # one asynchronous upload per epoch from pinned memory: a step's own copy from
                # pageable memory would wait for the device, a host sync inside every step
                rows = rows.pin_memory().to(self.device, non_blocking=True)
            self.rows = rows
        rows, self.rows = self.rows[:self.batch_size], self.rows[self.batch_size:]
        return rows


def watched_layers(model: nn.Module, inputs: torch.Tensor) -> list[Watched]:
    """The rows `actstat run` shows for `model`, found by running it once on `inputs` (a few
    samples; the model is left as it was): each weight or norm layer with the module that
    consumes its output (the next leaf module called with that tensor, unless it is a weight or
    norm layer itself), or alone where none does, and each repeated block's output (the residual
    stream); in the order their tensors are made. A layer called more than once is watched at
    its first call."""
    names = {id(m): name for name, m in model.named_modules()}
    blocks = repeated_blocks(model)
    # (module, its input, its output): held, so that no tensor's id is reused by another
    calls: list[tuple[nn.Module, torch.Tensor | None, torch.Tensor | None]] = []

    def seen(module: nn.Module, args: tuple, out: object) -> None:
        calls.append((module, first_tensor(args), first_tensor(out)))

    leaves = [m for m in model.modules() if next(m.children(), None) is None or id(m) in blocks]
    handles = [m.register_forward_hook(seen) for m in leaves]
    try:
        with preserved(model, inputs), torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    rows: list[tuple[int, Watched]] = []  # (the call whose output is measured, the row)
    done: set[int] = set()
    for k, (module, _, out) in enumerate(calls):
        if id(module) in done:
            continue
        done.add(id(module))
        if id(module) in blocks:
            rows.append((k, Watched(names[id(module)], module, can_die=False)))
            continue
        if not (is_weight_layer(module) or isinstance(module, NORM_TYPES)):
            continue
        consumer = next(((j, m) for j, (m, x, _) in enumerate(calls[k + 1:], start=k + 1)
                         if x is not None and x is out), None)
        if consumer is None or is_weight_layer(consumer[1]) or isinstance(consumer[1],
                                                                           NORM_TYPES):
            rows.append((k, Watched(names[id(module)], module, can_die=False)))
            continue
        j, post = consumer
        bounded = bounded_activation(post)
        bounds = (bounded.lower, bounded.upper) if bounded is not None else (None, None)
        rows.append((j, Watched(names[id(module)], post, module, can_die=True, bounds=bounds)))
    return [row for _, row in sorted(rows, key=lambda pair: pair[0])]


def _optimiser(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=schedule.lr, betas=(schedule.momentum, 0.999))
    return torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum)


def _dead(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group x[k] of a (K, batch, ...) tensor: the fraction of units (features; a conv map's
    channels) that are 0 for every sample, and the group's min and max (the least of its units'
    minima, the largest of their maxima)."""
    if x.dim() < 3:
        flat = x.reshape(x.shape[0], -1)
        return ((flat == 0).all(dim=1).to(torch.float64), flat.amin(dim=1),
                flat.amax(dim=1))
    # reduced along the batch (and a conv map's positions) in place, per unit: amin and amax,
    # not aminmax, whose reduction along a dimension took 10x theirs on the CPU
    dims = (1, *range(3, x.dim()))
    lo, hi = x.amin(dim=dims), x.amax(dim=dims)
    dead = ((hi == 0) & (lo == 0)).to(torch.float64).mean(dim=1)
    return dead, lo.amin(dim=1), hi.amax(dim=1)


def _hist_range(bounds: tuple[float | None, float | None], lo: float,
                hi: float) -> tuple[float, float]:
    span = hi - lo if _finite(hi - lo) and hi > lo else max(abs(hi), 1.0)
    low = bounds[0] if bounds[0] is not None else (lo - HIST_WIDEN * span if lo < 0 else 0.0)
    high = bounds[1] if bounds[1] is not None else hi + HIST_WIDEN * span
    if not (_finite(low) and _finite(high)) or high <= low:
        return (-1.0, 1.0)
    return (low, high)


def _pinned(device: torch.device) -> bool:
    return device.type == "cuda"


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _number(value: float) -> float | None:
    return value if _finite(value) else None
