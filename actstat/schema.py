"""The JSON report's schema as a pydantic model: what `Report.from_dict` validates before it builds
a Report, so a hand-edited or corrupted file is refused with the key path of its first bad value.

Torch-free (`actstat plot` reads reports without torch). Keys a later actstat adds are ignored,
and the keys that schema version 1 gained after it first shipped (theory, expected values,
histograms, the config file) may be absent, as `report._only` reads them. Version 2 added layer
names, kinds and modules, rows without a pre-activation or a fan-in, the run's `model` and the
input's `shape`; a version 1 file (without them) is read as the built-in MLP it was. A run's
`lsuv` records came later within version 2: optional, so files without them still load, and
older readers ignore them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actstat.errors import ActstatError
from actstat.records import (
    EVENT_KINDS,
    FLAGS,
    HEALTHY,
    LAYER_KINDS,
    WIDTH_FLAGS,
    WIDTH_STABLE,
)

# strict: "0.5" is not a number and 1 is not true; a JSON integer is still a valid float
_STRICT = ConfigDict(strict=True, extra="ignore")

Number = float | None  # None: not finite, or not applicable
NonNegative = Annotated[float, Field(ge=0)] | None  # a std, a norm, a ratio of norms
Fraction = Annotated[float, Field(ge=0, le=1)] | None  # a share of the batch's values or units
Count = Annotated[int, Field(ge=1)]
Flag = Literal[FLAGS]  # type: ignore[valid-type]


class _Model(BaseModel):
    model_config = _STRICT


class TensorModel(_Model):
    mean: Number
    std: NonNegative
    min: Number
    max: Number
    near_zero: Fraction
    expected_std: NonNegative = None


class PostModel(TensorModel):
    dead: Fraction
    saturated: Fraction
    expected_mean: Number = None
    histogram: list[Annotated[int, Field(ge=0)]] | None = None


class GradModel(_Model):
    mean: Number
    std: NonNegative
    weight_std: NonNegative
    grad_to_data: NonNegative


class LayerModel(_Model):
    index: Count
    fan_in: Count | None  # None: a row without a weight (schema version 2)
    fan_out: Count
    pre: TensorModel | None  # None: a row of one tensor (schema version 2)
    post: PostModel
    grad: GradModel | None
    flags: list[Flag]
    # schema version 2; a version 1 file is the built-in MLP's weight rows
    name: str = ""
    kind: Literal[LAYER_KINDS] = "weight"  # type: ignore[valid-type]
    module: str = ""
    by_design: list[Flag] = []  # flags a deliberate zero explains (added within version 2)
    # schema version 4: the residual stream, branches and attention
    stream: Literal["start", "block"] | None = None
    branch_ratio: NonNegative = None
    attention_entropy: list[NonNegative] | None = None
    max_logit: Number = None
    scale_of: str | None = None
    scale_allowed: NonNegative = None
    grad_of: str | None = None


class TrainLayerModel(_Model):
    index: Count
    weight_change: NonNegative
    weight_delta: NonNegative
    bias_delta: NonNegative
    still_symmetric: bool
    name: str = ""  # added within version 2: absent from earlier reports


class TrainMultiplierModel(_Model):
    name: str
    start: Number
    end: Number


class TrainModel(_Model):
    steps: Annotated[int, Field(ge=0)]
    lr: Annotated[float, Field(gt=0)]
    loss: list[Number]
    layers: list[TrainLayerModel]
    head_weight_delta: NonNegative
    head_bias_delta: NonNegative
    multipliers: list[TrainMultiplierModel] = []  # added within version 2


class TheoryModel(_Model):
    chi1: NonNegative
    q_star: NonNegative
    phase: Literal["ordered", "critical", "chaotic"]


class LsuvLayerModel(_Model):
    name: str
    iterations: Annotated[int, Field(ge=0)]
    std: Annotated[float, Field(gt=0)]
    mean: float
    converged: bool


class TrajectoryLayerModel(_Model):
    name: str
    mean: list[Number]
    std: list[NonNegative]
    near_zero: list[Fraction]
    dead: list[Fraction] | None
    grad_std: list[NonNegative]
    hist_range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    histogram: list[list[Annotated[int, Field(ge=0)]]] | None = None
    abs_mean: list[NonNegative] | None = None  # added in version 4: mean |x| per step


class EventModel(_Model):
    kind: Literal[EVENT_KINDS]  # type: ignore[valid-type]
    step: Annotated[int, Field(ge=0)]
    layer: str | None = None
    since: Annotated[int, Field(ge=0)] | None = None
    value: Number = None


class TrajectoryModel(_Model):
    """`actstat train`'s record (additive in schema version 2: absent or null elsewhere)."""

    planned_steps: Count
    every: Count
    batch_size: Count
    optimizer: Literal["sgd", "adam"]
    lr: Annotated[float, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    warmup: Annotated[int, Field(ge=0)]
    stopped: Literal["nonfinite", "interrupted"] | None
    stopped_at: Annotated[int, Field(ge=0)] | None
    trained: bool | None
    loss_drop: Number
    chance_loss: NonNegative = None  # later within version 3: optional
    steps: list[Annotated[int, Field(ge=0)]]
    loss: list[Number]
    accuracy: list[Fraction] | None
    layers: list[TrajectoryLayerModel]
    events: list[EventModel]


class RunModel(_Model):
    scheme: str
    init: str
    init_params: dict[str, Any]
    act: str
    act_params: dict[str, Any]
    verdict: Literal[(HEALTHY, *FLAGS)]  # type: ignore[valid-type]
    loss: Number
    layers: Annotated[list[LayerModel], Field(min_length=1)]
    train: TrainModel | None
    theory: TheoryModel | None = None
    model: str | None = None  # schema version 2: a user's model
    lsuv: list[LsuvLayerModel] | None = None  # init lsuv (added within version 2)
    trajectory: TrajectoryModel | None = None  # schema version 2, additive: actstat train
    notes: list[str] = []  # what deliberate zeros did (added within version 2)


class InputModel(_Model):
    source: str
    batch_size: Count
    features: Count
    labelled: bool
    mean: Number
    std: NonNegative
    shape: list[Count] | None = None  # schema version 2


Size = list[list[NonNegative]]  # [step][seed] of one width


class CoordLayerModel(_Model):
    name: str
    sizes: Annotated[list[Size], Field(min_length=3)]
    slope: list[Number]
    spread: list[NonNegative]
    flags: list[Literal[WIDTH_FLAGS]]  # type: ignore[valid-type]
    first_step: Annotated[int, Field(ge=0)] | None


class CoordCheckModel(_Model):
    """`actstat coord-check`'s record (added in schema version 4: absent elsewhere)."""

    param: Literal["sp", "mup", "own"]
    optimizer: str
    lr: Annotated[float, Field(gt=0)]
    base_width: Count | None
    widths: Annotated[list[Count], Field(min_length=3)]
    steps: list[Annotated[int, Field(ge=0)]]
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    batch_size: Count
    threshold: Annotated[float, Field(gt=0)]
    layers: Annotated[list[CoordLayerModel], Field(min_length=1)]
    loss: list[list[list[Number]]]
    verdict: Literal[(WIDTH_STABLE, *WIDTH_FLAGS)]  # type: ignore[valid-type]
    events: list[EventModel] = []
    model: str | None = None


class ReportModel(_Model):
    schema_version: int
    actstat_version: str
    torch_version: str
    device: str
    config: dict[str, Any]  # validated as a Config by whoever re-runs it (check)
    input: InputModel
    # a coord check's report has none (its record is coord_check)
    runs: list[RunModel]
    config_file: str | None = None
    reduction: str | None = None  # added in version 3: absent from earlier reports
    coord_check: CoordCheckModel | None = None  # added in version 4

    @model_validator(mode="after")
    def _something_measured(self) -> ReportModel:
        if not self.runs and self.coord_check is None:
            raise ValueError("runs: a report holds at least one run (or a coord check)")
        return self


def validate(raw: Any, origin: str) -> None:
    """Raise an ActstatError naming `origin` and the first invalid value's key path, e.g.
    `base.json: runs[0].layers[3].post.std: must be a number (got 'abc')`."""
    from actstat.config import validation_message  # the project's one pydantic error formatter

    try:
        ReportModel.model_validate(raw)
    except ValidationError as err:
        raise ActstatError(validation_message(err, ReportModel, origin)) from None
