"""The Python API: any nn.Module and a batch -> the Report that the CLI renders, saves and checks.

    import actstat
    report = actstat.profile(model, images, labels)
    report                       # a table in a terminal or a notebook
    report.save("baseline.json") # what `actstat check` and `actstat plot` read

Names exported from `actstat` (see actstat/__init__.py) are the stable surface; everything else
is internal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actstat.config import Thresholds, thresholds_from
from actstat.errors import ModelError
from actstat.pipeline import assemble, input_stats, model_run
from actstat.records import API_SOURCE
from actstat.report import Report

Layers = type[nn.Module] | str | Sequence[type[nn.Module] | str]
Loss = Callable[[torch.Tensor, Any], torch.Tensor]


def profile(model: nn.Module, inputs: Any, targets: Any = None, *, loss: Loss | None = None,
            output: int | str | None = None, layers: Layers | None = None, grad: bool = True,
            hist: bool = False, thresholds: Thresholds | Mapping[str, float] | None = None,
            name: str | None = None) -> Report:
    """Measure every layer of `model` on one batch and return the Report.

    - `inputs`: a tensor, a tuple of the forward's positional arguments, or a dict of its
      keyword arguments (`{"input_ids": ids}`); on the model's device.
    - `targets`: the loss is cross-entropy of the output (logits (..., classes)) against them;
      `loss(output, targets)` replaces it; with neither, the loss is the output's sum, so that
      every layer still gets a gradient. `output` selects the tensor of a tuple or dict output
      (an index or a key; default: its first tensor).
    - `layers`: measure only these: module classes (`nn.Conv2d`) and name patterns
      (`"blocks.*"`); default: every weight layer and what consumes it, every normalisation
      layer and every repeated block's output (docs/python-api.md).
    - `grad`: one backward pass (dL/d(output) per layer, dL/dW and grad:data per weight); the
      model's own `.grad` are left as they were. `hist`: a histogram of every row's output.
    - `thresholds`: when a layer is flagged (the keys of docs/configuration.md's `thresholds`).
    - `name`: the run's label (default: the model's class name).

    The model is left exactly as it was (parameters, buffers, modes, `.grad`, hooks); it runs in
    the mode it is in. Raises ModelError (an ActstatError) when the forward fails, nothing is
    measurable, or the output holds no tensor to take a loss of.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"profile() measures an nn.Module, got {type(model).__name__}")
    limits = thresholds_from(thresholds)
    label = name if name is not None else type(model).__name__
    given = input_stats(inputs, source="tensors passed to actstat.profile",
                        labelled=targets is not None)
    run = model_run(model, inputs, targets, scheme=label, init="keep", init_params={},
                    label=type(model).__name__, input_std=given.std, thresholds=limits,
                    loss=loss, output=output, layers=layers, grad=grad, hist=hist)
    first = _first_parameter(model)
    x = first if first is not None else _first_input(inputs)
    return assemble({"source": API_SOURCE, "grad": grad, "hist": hist,
                     "dtype": str(x.dtype).removeprefix("torch.") if x is not None else "float32",
                     "thresholds": limits.model_dump(mode="json")},
                    x.device if x is not None else torch.device("cpu"), given, [run])


def _first_parameter(model: nn.Module) -> torch.Tensor | None:
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def _first_input(inputs: Any) -> torch.Tensor | None:
    from actstat.capture import first_tensor

    return first_tensor(inputs)
