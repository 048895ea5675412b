"""Records: the frozen types every stage passes on, below every module that makes or reads them.

The engine's records of one pass (`Capture`, `CapturedLayer`: actstat/capture.py makes them),
an init's deliberate zeros (`ByDesign`: actstat/model.py finds them), and the Report with its
rows (`LayerStats`, `Run`, ...): the one record every output is made from (JSON, CSV, Markdown,
tables, checks); actstat/report.py gives it its face (printing, saving, reading files).

Plain numbers only: no tensors, no modules, no formatting. A number that is not finite (or does
not apply, such as the dead fraction of tanh) is None, so `to_dict` is valid strict JSON as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 4
# versions `from_dict` reads: 1 (before layer names, kinds and user models) is read as the
# built-in MLP it always was; 1 and 2 hold the built-in MLP's hidden layers only (3 adds its
# head, one engine measuring every model, and one definition of `dead`; 4 the residual stream,
# branches and attention, and the judgement that knows them: docs/json-schema.md)
READABLE_VERSIONS = (1, 2, 3, 4)
# the first version whose built-in MLP runs end with the head's row
HEAD_ROW_VERSION = 3
# the first version whose `dead` is every command's one definition (actstat/analysis.py): a
# unit at its activation's floor; `actstat train` counted units exactly 0 before
DEAD_BY_FLOOR_VERSION = 3
# what a layer row is (actstat/analysis.py, "Layers of any model"); the built-in MLP's rows
# are all `weight` rows: a Linear and the activation that consumes it
LAYER_KINDS = ("weight", "norm", "activation", "block", "input", "selected", "attention",
               "branch")
# every flag a layer can carry, in verdict order (definitions: actstat/analysis.py)
FLAGS = ("nonfinite", "symmetric", "large_branch", "exploding", "vanishing", "entropy_collapse",
         "logit_growth", "saturated", "grad_exploding", "grad_vanishing", "grad_zero", "dead")
# a row's place in a residual network (actstat/analysis.py): the stream's start (the first
# block's input) and each residual block's output
STREAM_ROLES = ("start", "block")
HEALTHY = "healthy"
# what can happen during training (actstat/analysis.py, "Training"), in the order they are told
EVENT_KINDS = ("nonfinite_loss", "interrupted", "dead", "std_jump")
# what a layer's coordinate size can do with width (actstat/coordcheck.py), and the verdict of
# a coord check that none of its layers does
WIDTH_FLAGS = ("grows_with_width", "shrinks_with_width")
WIDTH_STABLE = "width-stable"
# `config["source"]` of a report made by actstat.profile in Python: there is no YAML behind it,
# so `actstat check` cannot measure it again (it says so)
API_SOURCE = "actstat.profile"


@dataclass(frozen=True)
class TensorStats:
    """Statistics of all batch × units values of one tensor (definitions: actstat/analysis.py)."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    near_zero: float | None
    expected_std: float | None = field(default=None, kw_only=True)  # mean-field theory


@dataclass(frozen=True)
class PostStats(TensorStats):
    dead: float | None  # None: the activation cannot die
    saturated: float | None  # None: the activation is unbounded
    expected_mean: float | None = field(default=None, kw_only=True)  # mean-field theory
    # --hist: counts in equal bins over [min, max]; None when not measured or not finite
    histogram: tuple[int, ...] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class GradStats:
    """The backward pass at one hidden layer (definitions: actstat/analysis.py)."""

    mean: float | None  # of dL/d(pre)
    std: float | None  # of dL/d(pre)
    weight_std: float | None  # of dL/dW
    grad_to_data: float | None  # std(dL/dW) / std(W); None when std(W) is 0


@dataclass(frozen=True)
class TrainLayer:
    """How one hidden layer's weights moved during the training probe."""

    index: int
    weight_change: float | None  # ||W_end - W_start|| / ||W_start|| (Frobenius); None if W_start = 0
    weight_delta: float | None  # ||W_end - W_start||
    bias_delta: float | None  # ||b_end - b_start||; None without bias
    still_symmetric: bool  # every unit's incoming weights and bias still identical
    # the Linear's module name (`0`, `fc1`, `blocks.3.branch.fc1`): a model's rows are matched to
    # their layer rows by it; "" in reports written before it was recorded
    name: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class TrainMultiplier:
    """A residual block's learnable α (rezero's, or model.multiplier) before and after training."""

    name: str  # `blocks.3.multiplier`
    start: float | None
    end: float | None


@dataclass(frozen=True)
class TrainStats:
    """A few steps of plain SGD on the batch, after the measurement."""

    steps: int
    lr: float
    loss: tuple[float | None, ...]  # before the first step, then after each step: steps + 1 values
    layers: tuple[TrainLayer, ...]
    head_weight_delta: float | None
    head_bias_delta: float | None
    # residual blocks with a multiplier: each α's value before and after; () without one
    multipliers: tuple[TrainMultiplier, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class LayerStats:
    """One row: a weight or normalisation layer's output (`pre`) and that of the module that
    consumes it (`post`), or one tensor on its own (`pre` None, `post` the tensor)."""

    index: int  # 1 = the first row (the first hidden layer of the MLP)
    fan_in: int | None  # None: the row has no weight (norm, block, activation, input)
    fan_out: int  # the units of `post` (a conv feature map's channels)
    pre: TensorStats | None  # the weight or norm layer's output; None: a row of one tensor
    post: PostStats  # the consumer's output, or the row's one tensor
    grad: GradStats | None  # None: measured without a backward pass (--no-grad)
    flags: tuple[str, ...]
    # the module's `named_modules` path (`blocks.3.mlp.fc1`; the k-th call of one module
    # `name#k`); the MLP's Linear is `0`, `2`, `4`, ... of its nn.Sequential
    name: str = field(default="", kw_only=True)
    kind: str = field(default="weight", kw_only=True)  # one of LAYER_KINDS
    # the module classes measured: "Linear → ReLU", "Conv2d", "BatchNorm2d → ReLU"
    module: str = field(default="", kw_only=True)
    # flags the row shows because of its init's deliberate zeros (fixup's zero head, rezero's
    # α = 0): not problems, not in `flags` nor the verdict; the run's `notes` say why
    by_design: tuple[str, ...] = field(default=(), kw_only=True)
    # the residual stream: "start" (the first block's input) or "block" (a residual block's
    # output); None for any other row
    stream: str | None = field(default=None, kw_only=True)
    # a branch added onto the stream: rms(branch) / rms(stream) at the add
    branch_ratio: float | None = field(default=None, kw_only=True)
    # an attention module's row: each head's mean normalised entropy (1 uniform, 0 one key),
    # and the largest attention logit
    attention_entropy: tuple[float | None, ...] | None = field(default=None, kw_only=True)
    max_logit: float | None = field(default=None, kw_only=True)
    # what `exploding`/`vanishing` hold the row to: the row whose std is the reference
    # ("input" for the input's; None: not judged) and, on the stream, the growth allowed
    # (√ of the block's position); what `grad_exploding`/`grad_vanishing` hold it to
    scale_of: str | None = field(default=None, kw_only=True)
    scale_allowed: float | None = field(default=None, kw_only=True)
    grad_of: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Theory:
    """The scheme's mean-field phase (definitions: actstat/theory.py)."""

    chi1: float | None
    q_star: float | None  # None: the length map has no finite fixed point
    phase: str  # ordered, critical or chaotic


@dataclass(frozen=True)
class LsuvLayer:
    """How `lsuv` scaled one weight layer on the batch (actstat/lsuv.py): its output's std and
    mean over all values after `iterations` updates (W / std, bias re-centred), and whether they
    came within the init's tolerance of 1 and 0 in at most its max_iterations updates."""

    name: str  # the module's `named_modules` path (the MLP's `0`, `2`, ..., its head too)
    iterations: int  # updates made: 0 when the orthogonal start was already within tolerance
    std: float
    mean: float
    converged: bool


@dataclass(frozen=True)
class TrajectoryLayer:
    """One watched layer through training: a value per recorded step (definitions:
    actstat/watch.py). `dead` None: the layer's activation cannot die; `histogram`: counts per
    recorded step in equal bins over `hist_range` (None: not recorded)."""

    name: str
    mean: tuple[float | None, ...]
    std: tuple[float | None, ...]
    near_zero: tuple[float | None, ...]
    dead: tuple[float | None, ...] | None
    grad_std: tuple[float | None, ...]
    hist_range: tuple[float, float] | None = field(default=None, kw_only=True)
    histogram: tuple[tuple[int, ...], ...] | None = field(default=None, kw_only=True)
    # mean |x| per recorded step (actstat coord-check's coordinate size); None: a file
    # written before it was recorded
    abs_mean: tuple[float | None, ...] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Event:
    """Something that happened during training, at the step it first showed (definitions:
    actstat/analysis.py, "Training")."""

    kind: str  # one of EVENT_KINDS
    step: int
    layer: str | None = None  # None: the run as a whole (the loss)
    since: int | None = None  # std_jump: the earlier step the ratio is taken against
    value: float | None = None  # dead: the fraction; std_jump: the ratio; loss: the loss


@dataclass(frozen=True)
class Trajectory:
    """A training run, recorded every `every` steps (definitions: actstat/watch.py): its
    schedule, the loss (and accuracy, with labels) and each watched layer per recorded step,
    what happened (`events`) and whether it trained (`trained`: the loss fell by at least
    thresholds.trained, and below `chance_loss` where there is one; `loss_drop` the fraction
    it fell by)."""

    steps: tuple[int, ...]
    loss: tuple[float | None, ...]
    accuracy: tuple[float | None, ...] | None  # None: no labels
    layers: tuple[TrajectoryLayer, ...]
    planned_steps: int
    every: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    warmup: int
    stopped: str | None = None  # None: ran every step; "nonfinite" or "interrupted"
    stopped_at: int | None = None  # the step it stopped at (not recorded when interrupted)
    events: tuple[Event, ...] = ()
    trained: bool | None = None  # None: not judged (too few steps recorded)
    loss_drop: float | None = None
    # a cross-entropy's chance level, ln(classes): what logits that know nothing score; None
    # for a loss that has none (the output's sum, a user's loss)
    chance_loss: float | None = None


@dataclass(frozen=True)
class Run:
    """One scheme (init × activation) on the shared batch."""

    scheme: str  # a readable, unique label: "kaiming(mode='fan_out') + relu"
    init: str
    init_params: Mapping[str, Any]
    act: str
    act_params: Mapping[str, Any]
    verdict: str
    loss: float | None  # the initial cross-entropy; None without a backward pass
    layers: tuple[LayerStats, ...]
    train: TrainStats | None = None  # None: no training probe (steps: 0)
    theory: Theory | None = None  # None: --no-theory, or a user's model
    # a user's model: its factory (`nets.py:make_cnn`) or class name; None: the built-in MLP
    model: str | None = None
    # init lsuv: every weight layer in forward order, as it scaled it; None: any other init
    lsuv: tuple[LsuvLayer, ...] | None = None
    trajectory: Trajectory | None = None  # `actstat train`: the statistics through training
    # what the scheme's deliberate zeros did, said once (actstat/analysis.py `design_notes`)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputStats:
    source: str
    batch_size: int
    features: int
    labelled: bool
    mean: float | None  # None: token ids, whose moments mean nothing
    std: float | None
    # one sample's shape ((784,), (1, 28, 28), (32,) token ids); None: read from a version 1 file
    shape: tuple[int, ...] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class CoordLayer:
    """One layer of a coord check (definitions: actstat/coordcheck.py): its coordinate size
    (mean |x| of the row's `post`) per width, step and seed, and per step the slope of log size
    against log width (the mean of the seeds' slopes) and its spread (their population std).
    A slope is None where a size is 0 or missing (a zero readout at init; a diverged run)."""

    name: str
    sizes: tuple[tuple[tuple[float | None, ...], ...], ...]  # [width][step][seed]
    slope: tuple[float | None, ...]  # per step
    spread: tuple[float | None, ...]  # per step
    flags: tuple[str, ...]  # WIDTH_FLAGS it carries at some step
    first_step: int | None  # the first step it is flagged at; None: never


@dataclass(frozen=True)
class CoordCheck:
    """`actstat coord-check`: copies of one model at several widths, trained for a few steps
    (definitions: actstat/coordcheck.py)."""

    param: str  # sp, mup (actstat/parametrisation.py), or own: a factory's model as it is
    optimizer: str
    lr: float
    base_width: int | None  # μP's base; None under sp
    widths: tuple[int, ...]
    steps: tuple[int, ...]  # 0 (init), 1, ..., after each update
    seeds: tuple[int, ...]
    batch_size: int
    threshold: float  # thresholds.width_slope
    layers: tuple[CoordLayer, ...]
    loss: tuple[tuple[tuple[float | None, ...], ...], ...]  # [width][step][seed]
    verdict: str  # WIDTH_STABLE, or the first flag of the worst layer
    # runs whose loss went non-finite: kind "nonfinite_loss", at `step`, layer "width W, seed S"
    events: tuple[Event, ...] = ()
    model: str | None = None  # a factory's spec; None: the built-in MLP


@dataclass(frozen=True, repr=False)
class Report:
    """Everything one run measured, as plain numbers (`to_dict` / `from_dict`). The Report that
    commands and `actstat.profile` hand out is actstat/report.py's, which adds how it shows
    itself and saves."""

    schema_version: int
    actstat_version: str
    torch_version: str
    device: str
    config: Mapping[str, Any]  # fully resolved: load it again to re-run exactly this
    input: InputStats
    runs: tuple[Run, ...]
    # the YAML file the config came from, for `check` to re-read: relative to the report file's
    # directory when written to a file (see `located`), absolute on stdout; None: no file
    config_file: str | None = None
    # which reductions computed the statistics (actstat/fused.py `path_for`): "kernel" (the C
    # kernel, for float32 CPU tensors) or "torch (...)" with why; None: not recorded (a file
    # written before schema version 3)
    reduction: str | None = None
    # `actstat coord-check`'s record (its runs are empty); None: any other command's report
    coord_check: CoordCheck | None = None

    def __repr__(self) -> str:
        if self.coord_check is not None:
            return (f"<actstat Report, coord check of {len(self.coord_check.widths)} widths on "
                    f"{self.device}: {self.coord_check.verdict}>")
        runs = "; ".join(f"{run.scheme}: {run.verdict}" for run in self.runs)
        return f"<actstat Report, {len(self.runs)} run(s) on {self.device}: {runs}>"

    def to_json(self) -> str:
        """The documented JSON contract (docs/json-schema.md): strict JSON, no NaN."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The report's keys; `coord_check` only in a coord check's report (schema version 4:
        docs/json-schema.md)."""
        extra = ({} if self.coord_check is None
                 else {"coord_check": coord_check_dict(self.coord_check)})
        return {
            "schema_version": self.schema_version,
            "actstat_version": self.actstat_version,
            "torch_version": self.torch_version,
            "device": self.device,
            "config": dict(self.config),
            "input": {**asdict(self.input), "shape": None if self.input.shape is None
                      else list(self.input.shape)},
            "runs": [_run_dict(run) for run in self.runs],
            "config_file": self.config_file,
            "reduction": self.reduction,
            **extra,
        }


def coord_check_dict(c: CoordCheck) -> dict[str, Any]:
    def nested(values: Any) -> Any:
        return [nested(v) for v in values] if isinstance(values, tuple) else values

    return {
        **{name: getattr(c, name) for name in ("param", "optimizer", "lr", "base_width",
                                               "batch_size", "threshold", "verdict", "model")},
        "widths": list(c.widths), "steps": list(c.steps), "seeds": list(c.seeds),
        "loss": nested(c.loss),
        "layers": [{"name": layer.name, "sizes": nested(layer.sizes),
                    "slope": list(layer.slope), "spread": list(layer.spread),
                    "flags": list(layer.flags), "first_step": layer.first_step}
                   for layer in c.layers],
        "events": [asdict(event) for event in c.events],
    }


def coord_check_from(raw: Mapping[str, Any]) -> CoordCheck:
    def nested(values: Any) -> Any:
        return tuple(nested(v) for v in values) if isinstance(values, list) else values

    return CoordCheck(
        **{name: raw[name] for name in ("param", "optimizer", "lr", "base_width", "batch_size",
                                        "threshold", "verdict")},
        model=raw.get("model"),
        widths=tuple(raw["widths"]), steps=tuple(raw["steps"]), seeds=tuple(raw["seeds"]),
        loss=nested(raw["loss"]),
        layers=tuple(CoordLayer(name=layer["name"], sizes=nested(layer["sizes"]),
                                slope=tuple(layer["slope"]), spread=tuple(layer["spread"]),
                                flags=tuple(layer["flags"]), first_step=layer["first_step"])
                     for layer in raw["layers"]),
        events=tuple(Event(**_only(Event, event)) for event in raw.get("events", [])),
    )


def finite_or_none(value: float | None) -> float | None:
    """The JSON-safe form of a measured number: None unless finite."""
    return value if value is not None and math.isfinite(value) else None


def _run_dict(run: Run) -> dict[str, Any]:
    return {
        "scheme": run.scheme,
        "init": run.init,
        "init_params": dict(run.init_params),
        "act": run.act,
        "act_params": dict(run.act_params),
        "verdict": run.verdict,
        "loss": run.loss,
        "model": run.model,
        "notes": list(run.notes),
        "layers": [
            {
                "index": layer.index,
                "name": layer.name,
                "kind": layer.kind,
                "module": layer.module,
                "fan_in": layer.fan_in,
                "fan_out": layer.fan_out,
                "pre": None if layer.pre is None else asdict(layer.pre),
                "post": {**asdict(layer.post), "histogram": None if layer.post.histogram is None
                         else list(layer.post.histogram)},
                "grad": None if layer.grad is None else asdict(layer.grad),
                "flags": list(layer.flags),
                "by_design": list(layer.by_design),
                "stream": layer.stream,
                "branch_ratio": layer.branch_ratio,
                "attention_entropy": (None if layer.attention_entropy is None
                                      else list(layer.attention_entropy)),
                "max_logit": layer.max_logit,
                "scale_of": layer.scale_of,
                "scale_allowed": layer.scale_allowed,
                "grad_of": layer.grad_of,
            }
            for layer in run.layers
        ],
        "train": None if run.train is None else {
            **asdict(run.train), "loss": list(run.train.loss),
            "layers": [asdict(layer) for layer in run.train.layers],
            "multipliers": [asdict(alpha) for alpha in run.train.multipliers],
        },
        "theory": None if run.theory is None else asdict(run.theory),
        "lsuv": None if run.lsuv is None else [asdict(layer) for layer in run.lsuv],
        "trajectory": None if run.trajectory is None else _trajectory_dict(run.trajectory),
    }


def _trajectory_dict(t: Trajectory) -> dict[str, Any]:
    """Columns, not rows: each statistic a list over the recorded steps."""
    return {
        **{name: getattr(t, name) for name in ("planned_steps", "every", "batch_size",
                                               "optimizer", "lr", "momentum", "warmup",
                                               "stopped", "stopped_at", "trained",
                                               "loss_drop", "chance_loss")},
        "steps": list(t.steps),
        "loss": list(t.loss),
        "accuracy": None if t.accuracy is None else list(t.accuracy),
        "layers": [{
            "name": layer.name,
            **{stat: list(getattr(layer, stat)) for stat in ("mean", "std", "near_zero",
                                                              "grad_std")},
            "dead": None if layer.dead is None else list(layer.dead),
            "abs_mean": None if layer.abs_mean is None else list(layer.abs_mean),
            "hist_range": None if layer.hist_range is None else list(layer.hist_range),
            "histogram": None if layer.histogram is None else [list(h) for h in layer.histogram],
        } for layer in t.layers],
        "events": [asdict(event) for event in t.events],
    }


def _trajectory_from(raw: Mapping[str, Any]) -> Trajectory:
    def column(values: Any) -> Any:
        return None if values is None else tuple(values)

    return Trajectory(
        **{name: raw[name] for name in ("planned_steps", "every", "batch_size", "optimizer",
                                        "lr", "momentum", "warmup", "stopped", "stopped_at",
                                        "trained", "loss_drop")},
        chance_loss=raw.get("chance_loss"),  # absent from reports before it was recorded
        steps=tuple(raw["steps"]),
        loss=tuple(raw["loss"]),
        accuracy=column(raw["accuracy"]),
        layers=tuple(TrajectoryLayer(
            name=layer["name"],
            **{stat: tuple(layer[stat]) for stat in ("mean", "std", "near_zero", "grad_std")},
            dead=column(layer["dead"]),
            abs_mean=column(layer.get("abs_mean")),
            hist_range=column(layer["hist_range"]),
            histogram=None if layer["histogram"] is None else tuple(
                tuple(h) for h in layer["histogram"]),
        ) for layer in raw["layers"]),
        events=tuple(Event(**_only(Event, event)) for event in raw["events"]),
    )


def run_from(raw: Mapping[str, Any]) -> Run:
    return Run(
        scheme=raw["scheme"],
        init=raw["init"],
        init_params=raw["init_params"],
        act=raw["act"],
        act_params=raw["act_params"],
        verdict=raw["verdict"],
        loss=raw["loss"],
        layers=tuple(
            LayerStats(
                index=layer["index"],
                fan_in=layer["fan_in"],
                fan_out=layer["fan_out"],
                pre=None if layer["pre"] is None else TensorStats(**_only(TensorStats,
                                                                          layer["pre"])),
                post=_post_from(layer["post"]),
                grad=None if layer["grad"] is None else GradStats(**_only(GradStats, layer["grad"])),
                flags=tuple(layer["flags"]),
                # version 1: the built-in MLP, whose k-th Linear is module 2(k - 1)
                name=layer.get("name", str(2 * (layer["index"] - 1))),
                kind=layer.get("kind", "weight"),
                module=layer.get("module", ""),
                by_design=tuple(layer.get("by_design", ())),
                stream=layer.get("stream"),
                branch_ratio=layer.get("branch_ratio"),
                attention_entropy=(None if layer.get("attention_entropy") is None
                                   else tuple(layer["attention_entropy"])),
                max_logit=layer.get("max_logit"),
                scale_of=layer.get("scale_of"),
                scale_allowed=layer.get("scale_allowed"),
                grad_of=layer.get("grad_of"),
            )
            for layer in raw["layers"]
        ),
        model=raw.get("model"),
        notes=tuple(raw.get("notes", ())),
        train=None if raw["train"] is None else _train_from(raw["train"]),
        theory=None if raw.get("theory") is None else Theory(**_only(Theory, raw["theory"])),
        lsuv=None if raw.get("lsuv") is None else tuple(LsuvLayer(**_only(LsuvLayer, layer))
                                                        for layer in raw["lsuv"]),
        trajectory=None if raw.get("trajectory") is None else _trajectory_from(raw["trajectory"]),
    )


def input_from(raw: Mapping[str, Any]) -> InputStats:
    fields_ = _only(InputStats, raw)
    if fields_.get("shape") is not None:
        fields_["shape"] = tuple(fields_["shape"])
    return InputStats(**fields_)


def _post_from(raw: Mapping[str, Any]) -> PostStats:
    fields_ = _only(PostStats, raw)
    if fields_.get("histogram") is not None:
        fields_["histogram"] = tuple(fields_["histogram"])
    return PostStats(**fields_)


def _train_from(raw: Mapping[str, Any]) -> TrainStats:
    return TrainStats(
        steps=raw["steps"],
        lr=raw["lr"],
        loss=tuple(raw["loss"]),
        layers=tuple(TrainLayer(**_only(TrainLayer, layer)) for layer in raw["layers"]),
        head_weight_delta=raw["head_weight_delta"],
        head_bias_delta=raw["head_bias_delta"],
        multipliers=tuple(TrainMultiplier(**_only(TrainMultiplier, alpha))
                          for alpha in raw.get("multipliers", [])),
    )


def _only(kind: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `kind` from `raw`: later, additive schema fields are ignored, and fields
    with a default (added after version 1 first shipped) may be absent."""
    return {f.name: raw[f.name] for f in fields(kind)
            if f.name in raw or (f.default is MISSING and f.default_factory is MISSING)}


# -- the engine's records of one pass (actstat/capture.py) ------------------------------------


@dataclass(frozen=True)
class CapturedLayer:
    """One measured tensor of one module call, as plain numbers.

    `stats`: mean, std, min, max, near_zero, dead; `spread` for a weight layer (the `symmetric`
    flag's statistic); `saturated` for a bounded activation.
    `grad`: None without a backward pass, or when the tensor was not part of the autograd graph
    (a weight layer's input made from the data by ops with no parameter); else mean and std of
    dL/d(tensor) and, for a module with a weight, `weight_std`, `weight_min`, `weight_max` (of
    dL/dW), `weight_data_std` (of W) and `grad_to_data` (their ratio; None when std(W) is 0 or a
    number is not finite);
    the weight entries are None for a frozen weight. `histogram`: counts in equal bins over
    [min, max] (None unless asked for). `unit_dim`: the dimension of `shape` whose entries are
    the units that `dead` counts. `weight_shape`: the shape of the module's weight parameter
    (None for an input record or a module without one), for fan-in and fan-out, in
    torch.nn.init's layout (out, in, *kernel): a `Conv1D`'s (in, out) weight is given swapped."""

    name: str
    kind: str
    module_type: str
    shape: tuple[int, ...]
    unit_dim: int
    weight_shape: tuple[int, ...] | None
    stats: dict[str, float]
    grad: dict[str, float | None] | None
    histogram: tuple[float, ...] | None
    consumes: str | None = None  # an `activation`: the weight or norm layer call it consumes
    # the residual stream (actstat/stream.py): "start" for the first block's input, "block"
    # for a block's output; None for any other tensor
    stream: str | None = field(default=None, kw_only=True)
    # the residual block call whose output it is (a "block" stream tensor)
    block: str | None = field(default=None, kw_only=True)
    # a branch added onto the stream: rms(branch) / rms(stream) at the add
    branch: float | None = field(default=None, kw_only=True)
    # an attention module's: each head's mean normalised entropy, then the largest logit
    attention: tuple[float, ...] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Capture:
    """One pass: every measured layer in execution order, and the loss of the backward pass."""

    layers: tuple[CapturedLayer, ...]
    loss: float | None
    extra: tuple[float, ...] = ()  # the caller's own numbers fetched in the same copy


# -- an init's deliberate zeros (actstat/model.py finds them, actstat/analysis.py reads them) --


@dataclass(frozen=True)
class ByDesign:
    """Zeros a model's init sets on purpose, by the module names of its rows, and what they do
    to the first backward pass (actstat/model.py `by_design` finds them in the built-in model).

    - `source`: what set them (`fixup`, `rezero`, `model.multiplier 0`), named in the note.
    - `zero_weights`: weight layers that start at exactly 0 and leave it once trained (fixup's
      head, and its branch last layers where the activation after them passes a gradient at 0):
      their `symmetric`, `vanishing` and `dead` are by design. (Zero weights make every unit
      compute the same 0, but their gradients differ per unit, so they do not stay identical.)
    - `stuck`: weight layers set to 0 on purpose that can never leave it: the activation after
      them is flat at 0 (relu: its gradient there is 0), so their units are dead for good and
      every layer before them in their branch gets no gradient either. Only `symmetric` and
      `vanishing` are by design there; `dead` and `grad_zero` stay flagged.
    - `gates`: residual blocks whose branch multiplier α starts at 0 (rezero): each block
      starts as the identity.
    - `quiet`: layers whose gradients are exactly 0 at step 0 only because of those zeros
      downstream (before a zero head or a zero branch layer, behind α = 0), and that flow once
      the first steps move the zeros, whose own gradients are not 0: their `grad_zero` and
      `grad_vanishing` are by design.
    - `activation`: the activation's name, for the note on stuck layers.
    """

    source: str
    zero_weights: frozenset[str] = frozenset()
    stuck: frozenset[str] = frozenset()
    gates: frozenset[str] = frozenset()
    quiet: frozenset[str] = frozenset()
    activation: str = ""

    def flags(self, name: str) -> frozenset[str]:
        """The flags that the row of module `name` carries by design."""
        flags: set[str] = set()
        if name in self.zero_weights:
            flags |= {"symmetric", "vanishing", "dead"}
        if name in self.stuck:
            flags |= {"symmetric", "vanishing"}
        if name in self.quiet:
            flags |= {"grad_zero", "grad_vanishing"}
        return frozenset(flags)
