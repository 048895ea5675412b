"""Watch: train a model on mini-batches and record, every `every` steps, each watched layer's
statistics (fastai's ActivationStats, in a terminal): the mean, std and near-zero fraction of its
output, its dead fraction, the std of the gradient at it, and optionally a histogram.

Recorded step s is the forward and backward pass of mini-batch s, before update s: step 0 is the
network at init. Steps 0, every, 2·every, ... are recorded, and the last step too. A recorded
step is a pass of the measurement engine (actstat/capture.py's Probe), with the rows and the
definitions of `actstat run` (actstat/analysis.py): the same network on the same batch gives the
same numbers at step 0 as `run`. What is new here:

- the statistics are those of each row's `post` tensor (mean, std, near-zero fraction, mean
  |x|, dead fraction: on that step's mini-batch, so on 64 samples a unit reads dead more
  easily than on run's 1,000: compare trajectories at one batch size), and the std of the
  gradient at the row's first tensor (dL/d(pre) where the row has one);
- **histogram**: counts in `bins` equal bins over a range fixed per layer at step 0 (the
  activation's range where it has one: tanh's [-1, 1]; otherwise step 0's [min, max] widened by
  half its span on each unbounded side, and from 0 where step 0 has no negative value). Values
  outside the range count in the end bins, so every value is counted at every step.
- **loss** and **accuracy** (with labels): of the mini-batch at that step.

Unrecorded steps run with no hook at all. A recorded step's numbers reach the host in one copy,
after its backward pass (on a GPU nothing waits for the device inside a step), and go into a
buffer allocated at the first recorded step for every recorded step: memory is sized by recorded
steps × layers × bins and does not grow while the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from actstat.activations import Activation
from actstat.analysis import pair_rows
from actstat.capture import Probe, eager, select_output
from actstat.records import CapturedLayer, Trajectory, TrajectoryLayer, finite_or_none

# the statistics recorded per row and step, in buffer order
LAYER_STATS = ("mean", "std", "near_zero", "dead", "grad_std", "abs_mean")
HIST_WIDEN = 0.5  # an unbounded side of the histogram's range: step 0's span times this, added


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
        return self.lr * self.warmup_factor(step)

    def warmup_factor(self, step: int) -> float:
        """What every learning rate is multiplied by at `step` (1 after the warm-up)."""
        return min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# the optimiser of a model, its parameter groups at their learning rates (μP's per layer, or a
# user's mup.MuAdam); the warm-up scales each group's own rate
Optimiser = Callable[[nn.Module], torch.optim.Optimizer]
# called after every step the host knows the loss of: (steps done, steps in all, the loss)
StepProgress = Callable[[int, int, float], None]
# called with each recorded step as it is recorded: a Trajectory of that one step (no events)
StepRecord = Callable[[Trajectory], None]


def watch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, schedule: Schedule,
          loss: Loss, *, labelled: bool, near_zero: float, saturation_cut: float = 0.97,
          bins: int = 0, numbered: bool = False, on_step: StepProgress | None = None,
          on_record: StepRecord | None = None, output: int | str | None = None,
          keyword: str | None = None, optimiser: Optimiser | None = None) -> Trajectory:
    """Train `model` (in train mode; left in the mode it was in) on mini-batches drawn from
    `inputs`/`targets` in a seeded order, epoch after epoch, recording its rows as `schedule`
    says. A non-finite loss stops the run at that step (`stopped` "nonfinite"), Ctrl-C at the
    step it came in ("interrupted"); both keep every step recorded before. Events and the
    verdict are left to actstat/analysis.py. `numbered`: rows named as the built-in MLP's
    tables name them (1 to L, then `head`), else by module path. `loss` takes the model's
    output as it returns it (a Hugging Face `ModelOutput` too); `output` picks the tensor of a
    tuple or dict output whose accuracy is counted (capture.select_output); `keyword`: the
    forward takes the mini-batch as this keyword argument. A `torch.compile`d model trains as
    its original module (capture.eager): hooks coming and going would recompile it.
    `optimiser`: makes the optimiser (default: the schedule's, one learning rate for every
    parameter)."""
    return _train(model, inputs, targets, schedule, loss, groups=0, labelled=labelled,
                  near_zero=near_zero, saturation_cut=saturation_cut, bins=bins,
                  numbered=numbered, on_step=on_step, on_record=[on_record], output=output,
                  keyword=keyword, optimiser=optimiser)[0]


def watch_stacked(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  schedule: Schedule, loss: Loss, *, groups: int, labelled: bool,
                  near_zero: float, saturation_cut: float = 0.97, bins: int = 0,
                  numbered: bool = False, on_step: StepProgress | None = None,
                  on_record: Sequence[StepRecord | None] | None = None,
                  optimiser: Optimiser | None = None) -> list[Trajectory]:
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
    return _train(model, inputs, targets, schedule, loss, groups=groups, labelled=labelled,
                  near_zero=near_zero, saturation_cut=saturation_cut, bins=bins,
                  numbered=numbered, on_step=on_step, on_record=on_record, optimiser=optimiser)


def _train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, schedule: Schedule,
           loss: Loss, *, groups: int, labelled: bool, near_zero: float, saturation_cut: float,
           bins: int, numbered: bool, on_step: StepProgress | None,
           on_record: Sequence[StepRecord | None] | None = None,
           output: int | str | None = None, keyword: str | None = None,
           optimiser: Optimiser | None = None) -> list[Trajectory]:
    """groups: 0 for one model, K for a stack of K. The host buffer holds, per recorded step,
    one row of numbers per model: one copy per recorded step for the whole stack."""
    k = max(groups, 1)
    model = eager(model)
    recorder = _Recorder(model, groups=groups, near_zero=near_zero,
                         saturation_cut=saturation_cut, bins=bins, labelled=labelled,
                         numbered=numbered)
    recorded = schedule.recorded()
    optimiser_ = optimiser(model) if optimiser is not None else _optimiser(model, schedule)
    base_rates = [group["lr"] for group in optimiser_.param_groups]
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
    host: torch.Tensor | None = None
    slot, step = 0, 0
    try:
        for step in range(schedule.steps):
            rows = order.next()
            x, y = inputs[rows], targets[rows]
            recording = slot < len(recorded) and recorded[slot] == step
            factor = schedule.warmup_factor(step)
            for group, rate in zip(optimiser_.param_groups, base_rates):
                group["lr"] = rate * factor
            optimiser_.zero_grad(set_to_none=True)
            with recorder.probe.hooks(x) if recording else nullcontext():
                out = model(x) if keyword is None else model(**{keyword: x})
            if groups:
                values = torch.stack([loss(out[j], y) for j in range(groups)])
                values.sum().backward()
            else:
                value = loss(out, y)
                value.backward()
                values = value.reshape(1)
            known = None
            if recording:
                logits = select_output(out, output).detach()
                numbers = recorder.numbers(values.detach(), logits, y)  # the one copy
                if host is None:  # sized at the first recorded step, for every recorded one
                    host = torch.full((len(recorded), k, len(numbers[0])), float("nan"),
                                      dtype=torch.float64)
                host[slot] = torch.tensor(numbers, dtype=torch.float64)
                known = [row[0] for row in numbers]
                for j, record in enumerate(on_record or ()):
                    if record is not None and stopped[j] is None:
                        record(recorder.trajectory(j, [step], [numbers[j]], schedule, None,
                                                   None))
                slot += 1
                for j in range(k):
                    if stopped[j] is None:
                        kept[j] = slot
            elif device_is_cpu:
                known = values.detach().tolist()
            if known is not None:
                for j in range(k):
                    if stopped[j] is None and not math.isfinite(known[j]):
                        stopped[j], stopped_at[j] = "nonfinite", step
                        if not recording:  # keep the step that went non-finite, its loss
                            last[j] = (step, recorder.row_of_loss(known[j]))
                if all(why is not None for why in stopped):
                    break
            optimiser_.step()
            if on_step is not None and known is not None:
                on_step(step + 1, schedule.steps,
                        next(known[j] for j in range(k) if stopped[j] is None))
    except KeyboardInterrupt:
        for j in range(k):
            if stopped[j] is None:
                stopped[j], stopped_at[j] = "interrupted", step
    finally:
        model.train(was_training)
        optimiser_.zero_grad(set_to_none=True)
    values_of = host.tolist() if host is not None else []
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
    """A watched run's measurement: the engine's Probe (no weight statistics; histograms over
    ranges fixed at the first recorded step) and, at each recorded step, its rows' numbers as
    one list per model of a stack: [loss, accuracy, then per row LAYER_STATS, then per row
    `bins` counts]. The rows are `actstat run`'s (analysis.pair_rows), found at the first
    recorded step."""

    def __init__(self, model: nn.Module, *, groups: int, near_zero: float,
                 saturation_cut: float, bins: int, labelled: bool, numbered: bool):
        self.groups = groups
        self.k = max(groups, 1)
        self.bins = bins
        self.labelled = labelled
        self.numbered = numbered
        # per record name, each model's histogram range: on the device from step 0 on, and on
        # the host once the first recorded step's copy has brought it
        self.device_ranges: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.ranges: dict[str, dict[int, tuple[float, float]]] = {}
        self.probe = Probe(model, None, grad=True, bins=bins, near_zero=near_zero,
                           saturation_cut=saturation_cut, groups=groups, weights=False,
                           hist_range=self._range)
        self.names: list[str] | None = None  # the rows', at the first recorded step
        self.can_die: list[bool] = []
        self.posts: list[str] = []
        self.width = 0

    def _range(self, name: str, group: int, rules: Activation | None, lo: torch.Tensor,
               hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A record's histogram range: fixed, on the device, the first time it is measured
        (step 0), within the activation's range where it has one; nothing is read on the host."""
        key = (name, group)
        if key not in self.device_ranges:
            bounds = (rules.lower, rules.upper) if rules is not None else (None, None)
            self.device_ranges[key] = hist_range(bounds, lo, hi)
        return self.device_ranges[key]

    def numbers(self, losses: torch.Tensor, out: torch.Tensor,
                targets: torch.Tensor) -> list[list[float]]:
        """This recorded step's numbers, a list per model, fetched in one copy with the
        loss and the accuracy."""
        f64 = torch.float64
        grouped = out if self.groups else out.unsqueeze(0)
        accuracy = torch.full((self.k,), float("nan"), dtype=f64, device=losses.device)
        if self.labelled and grouped.dim() >= 3 and grouped.shape[1:-1] == targets.shape:
            accuracy = (grouped.argmax(dim=-1) == targets).to(f64).flatten(1).mean(dim=1)
        fresh = [key for key in self.device_ranges if key[0] not in self.ranges]
        extra = accuracy[:, None]
        if fresh:  # step 0's ranges, fetched in the step's one copy (a row of them per model)
            bounds = torch.stack([torch.stack(self.device_ranges[key]).to(f64) for key in fresh])
            extra = torch.cat([extra, bounds.reshape(1, -1).expand(self.k, -1).to(extra.device)],
                              dim=1)
        captures = self.probe.collect(losses.to(f64), extra=extra)
        if fresh:
            values = captures[0].extra[1:]
            for i, (name, group) in enumerate(fresh):
                self.ranges.setdefault(name, {})[group] = (values[2 * i], values[2 * i + 1])
        rows = [pair_rows(c.layers) for c in captures]
        if self.names is None:
            self._name(rows[0])
        return [[c.loss, c.extra[0], *self._row_numbers(paired)]
                for c, paired in zip(captures, rows)]

    def _name(self, rows: list[tuple[CapturedLayer | None, CapturedLayer]]) -> None:
        names = [(pre or post).name for pre, post in rows]
        head = (len(rows) > 1 and rows[-1][0] is None and rows[-1][1].kind == "weight")
        if self.numbered:
            names = [str(i) for i in range(1, len(rows) + 1)]
            if head:
                names[-1] = "head"
        self.names = names
        self.posts = [post.name for _, post in rows]  # their histograms' ranges are by name
        self.can_die = [post.stats["dead"] == post.stats["dead"] for _, post in rows]
        self.width = 2 + len(rows) * (len(LAYER_STATS) + self.bins)

    def _row_numbers(self, rows: list[tuple[CapturedLayer | None, CapturedLayer]]
                     ) -> list[float]:
        if len(rows) != len(self.names or ()):
            raise RuntimeError("the model ran other layers than at its first recorded step")
        nan = float("nan")
        values: list[float] = []
        hists: list[float] = []
        for pre, post in rows:
            grad = (pre or post).grad
            values += [post.stats["mean"], post.stats["std"], post.stats["near_zero"],
                       post.stats["dead"], grad["std"] if grad is not None else nan,
                       post.stats["abs_mean"]]
            if self.bins:
                hists += list(post.histogram or [nan] * self.bins)
        return values + hists

    def row_of_loss(self, loss: float) -> list[float]:
        """A step that was not recorded but stopped the run: its loss, the rest NaN."""
        return [loss] + [float("nan")] * (self.width - 1)

    def trajectory(self, group: int, steps: list[int], host: list[list[float]],
                   schedule: Schedule, stopped: str | None,
                   stopped_at: int | None) -> Trajectory:
        """Model `group`'s trajectory from its rows."""
        n = len(LAYER_STATS)
        names = self.names or []
        per_layer = []
        for j, name in enumerate(names):
            base = 2 + j * n
            columns = [tuple(finite_or_none(row[base + c]) for row in host) for c in range(n)]
            histogram = None
            ranges = self.ranges.get(self.posts[j], {}).get(group)
            if self.bins and ranges is not None:
                start = 2 + len(names) * n + j * self.bins
                histogram = tuple(tuple(int(c) if math.isfinite(c) else 0
                                        for c in row[start:start + self.bins]) for row in host)
            per_layer.append(TrajectoryLayer(
                name=name, mean=columns[0], std=columns[1], near_zero=columns[2],
                dead=columns[3] if self.can_die[j] else None, grad_std=columns[4],
                abs_mean=columns[5],
                hist_range=ranges if histogram is not None else None,
                histogram=histogram))
        accuracy = tuple(finite_or_none(row[1]) for row in host)
        return Trajectory(
            steps=tuple(steps), loss=tuple(finite_or_none(row[0]) for row in host),
            accuracy=accuracy if self.labelled else None, layers=tuple(per_layer),
            planned_steps=schedule.steps, every=schedule.every, batch_size=schedule.batch_size,
            optimizer=schedule.optimizer, lr=schedule.lr, momentum=schedule.momentum,
            warmup=schedule.warmup, stopped=stopped, stopped_at=stopped_at)


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


def _optimiser(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=schedule.lr, betas=(schedule.momentum, 0.999))
    return torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum)


def hist_range(bounds: tuple[float | None, float | None], lo: torch.Tensor,
               hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A histogram's range from step 0's extremes `lo`, `hi` (0-d tensors, computed on their
    device): an activation's bound where it has one; else [min, max] widened by HIST_WIDEN of the
    span on each unbounded side, from 0 where nothing is negative; (-1, 1) where that is not a
    finite, non-empty range."""
    span = hi - lo
    span = torch.where(torch.isfinite(span) & (hi > lo), span, hi.abs().clamp(min=1.0))
    low = (torch.full_like(lo, bounds[0]) if bounds[0] is not None
           else torch.where(lo < 0, lo - HIST_WIDEN * span, torch.zeros_like(lo)))
    high = (torch.full_like(hi, bounds[1]) if bounds[1] is not None
            else hi + HIST_WIDEN * span)
    valid = torch.isfinite(low) & torch.isfinite(high) & (high > low)
    return (torch.where(valid, low, torch.full_like(low, -1.0)),
            torch.where(valid, high, torch.ones_like(high)))
