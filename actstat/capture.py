"""Capture: the measurement engine: per-module statistics of any nn.Module's forward (and
backward) pass, found by running it.

Every command measures through it (`Probe`): `run`, `compare`, `baseline`/`check` and
`actstat.profile` (`capture`; the built-in MLP's K schemes side by side, `capture_stacked`),
each recorded step of `actstat train` (actstat/watch.py), and lsuv's data-dependent pass
(actstat/lsuv.py, `weight_step`). It is the one place that hooks a model. It imports no model
module: a stacked layer (K models' weights side by side) says so itself (`stacked`).

Layers are the module calls the forward actually makes, in the order their forward returns
(a block after its children), named by their `named_modules` path; the k-th call of a module
that runs more than once is `name#k`. By default the capture measures:

- `weight`: the output of every weight layer (nn.Linear, nn.Conv1d/2d/3d and their transposes,
  nn.Embedding, and Hugging Face's `Conv1D`: `is_weight_layer`);
- `activation`: the output of the module that consumes a weight or norm layer's output: the next
  module called with that very tensor, or with one derived from it by in-place ops only
  (`out += x`, `nn.ReLU(inplace=True)`), as its first tensor argument. Containers
  (nn.Sequential) and pass-through modules (nn.Dropout, nn.Identity) hand it on;
- `norm`: the output of every normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm);
- `block`: the output of each repeated block (a child of an nn.ModuleList or nn.Sequential that
  holds two or more modules of the same class with submodules of their own): the residual stream;
- `input`: the input of a weight layer when it is not a tensor measured above (what a functional
  activation such as `F.relu`, a reshape or a flatten made), so that functional activations are
  covered; never the model's own inputs (the data), whose statistics the Report carries apart.

`layers=` selects instead: module classes (`nn.Conv2d`) and/or fnmatch patterns on the names
(`"blocks.*"`; `#k` is not part of the name matched); the outputs of the modules selected are
measured (no `input` records), and one that falls under none of the kinds above is `selected`.

A layer's statistics are reduced inside its forward hook, on the device, before any following
in-place op can overwrite the tensor: a float32 CPU tensor by actstat/fused.py's C kernel in one
read where it was built, anything else by torch, a chunk of samples at a time on the CPU (see
CHUNK and `_Moments`; definitions: actstat/analysis.py; arithmetic: actstat/reduce.py): mean,
population std, min, max, near-zero fraction, mean |x| (`abs_mean`: the coordinate size of
actstat coord-check); `dead`: the fraction of units at their
activation's floor (activations.describe; exactly 0 for any other module) for every sample and
position, the unit being the channel (dim 1) of a convolutional feature map and the last dim
otherwise;
`spread` only for a weight layer's output: the largest range across units on one sample (and
position), relative to the tensor's max|x| (0 when every unit computes the same value, an
all-zero output included: the `symmetric` flag of actstat/analysis.py); `saturated` only for a
known bounded activation module (its rule from actstat/activations.py).
Half-precision tensors are reduced in float32.

With `grad`, one backward pass of the loss: dL/d(output) of every measured tensor (mean, std;
a tensor hook registered when it was measured, so an in-place op later still gives the gradient
of the value that was measured) and, for a module with a weight, the std of dL/dW, its min and
max, the std of W and their ratio (grad:data). The user's `.grad` tensors are set aside during
the pass and put back after it, untouched.

Everything a pass measured on a device reaches the host in one copy (`torch.cat(...).tolist()`);
the kernel's numbers of CPU tensors are host floats from the start.
"""

from __future__ import annotations

import copy
import math
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from itertools import islice
from typing import Any, NamedTuple

import torch
from torch import nn

from actstat import fused
from actstat.activations import Activation, describe, identity
from actstat.config import Thresholds
from actstat.errors import ActstatError, ModelError
from actstat.records import Capture, CapturedLayer
from actstat.reduce import (
    Scratch,
    cross_entropy,
    exact,
    group_histogram,
    saturated_fraction,
    unit_spread,
)
from actstat.stream import Watch, rms, unwatched

WEIGHT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding,
)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
# modules whose output is a (batch, channels, ...) feature map: its unit is the channel
CHANNEL_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
# modules that hand their input on (in eval mode, the same tensor): not a consumer of their own
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout,
)
# modules that draw random numbers in training mode: measured in eval mode (dropout off), so
# that one seed gives one set of numbers; the model's other modules keep their mode (BatchNorm in
# training mode normalises by the batch's own statistics, as it does in training)
STOCHASTIC: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.MultiheadAttention)
# elements of a tensor reduced at a time on the CPU: a chunk and the scratch it is worked in
# (4 MiB each in float32) stay in the caches across the ten or so passes of its statistics,
# where a whole 50 MB feature map came from memory once per pass. 2**18 to 2**20 were within
# noise of each other on the 2-core benchmark machine; fewer, larger chunks mean fewer ops
CHUNK = 1 << 20
# the rules of a tensor that no activation made (a branch at its add): no floor, no range
NOT_AN_ACTIVATION = identity()
# a record's numbers: a float64 device vector (torch reductions), or host floats (the kernel's,
# already on the host: a CPU tensor's) that `collect` splices in around the one device copy
Row = torch.Tensor | list[float]
MOMENTS = ("mean", "std", "min", "max", "near_zero", "abs_mean")
# dL/d(output): mean, std; with a trainable weight, dL/dW: std, min, max, and W: std
GRAD = ("mean", "std")
WEIGHT_GRAD = ("weight_std", "weight_min", "weight_max", "weight_data_std")


def capture(model: nn.Module, inputs: Any, targets: torch.Tensor | None = None, *,
            loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
            output: int | str | None = None,
            layers: type[nn.Module] | str | Sequence[type[nn.Module] | str] | None = None,
            grad: bool = True, bins: int = 0,
            thresholds: Thresholds | None = None,
            blocks: Sequence[nn.Module] = ()) -> Capture:
    """Run `model` once on `inputs` (a tensor, a tuple of positional arguments or a dict of
    keyword arguments) and measure the layers it ran; with `grad`, also one backward pass of
    the loss: `loss(output, targets)` when given, cross-entropy against `targets` when given
    (logits (..., classes) against targets (...)), else the sum of the output. `output` picks
    the tensor of a tuple or dict output (default: the first tensor). The model runs in the mode
    it is in (train or eval) and is left exactly as it was: parameters, buffers (BatchNorm
    running statistics), `training`, `requires_grad`, existing `.grad` and hooks. `blocks`:
    modules measured as blocks besides the repeated ones, where the caller knows its model's
    blocks (the built-in residual model with a single block, which has no repeat to be found
    by)."""
    return _capture(model, inputs, targets, loss=loss, output=output, layers=layers, grad=grad,
                    bins=bins, thresholds=thresholds, blocks=blocks)[0]


def capture_stacked(model: nn.Module, inputs: Any, targets: torch.Tensor | None = None, *,
                    groups: int, loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                    grad: bool = True, bins: int = 0,
                    thresholds: Thresholds | None = None) -> list[Capture]:
    """`capture` of K models run side by side as one (actstat.model.stack_mlps): every tensor
    the model makes is (K, batch, ...), group k being model k's, and every `stacked` weight
    layer holds the K models' weights. One Capture per model, in stack order, with the numbers
    K separate captures give (to float rounding: a batched matmul sums in its own order). The
    backward pass is of the sum of the K models' losses (each group's output against the same
    `targets`), whose gradient for each model's parameters is that model's own. Still one host
    copy for the whole stack."""
    return _capture(model, inputs, targets, loss=loss, output=None, layers=None, grad=grad,
                    bins=bins, thresholds=thresholds, blocks=(), groups=groups)


def _capture(model: nn.Module, inputs: Any, targets: torch.Tensor | None, *,
             loss: Callable | None, output: int | str | None, layers: Any, grad: bool, bins: int,
             thresholds: Thresholds | None, blocks: Sequence[nn.Module],
             groups: int = 0) -> list[Capture]:
    """groups: 0 for one model, K for a stack of K."""
    t = thresholds if thresholds is not None else Thresholds()
    selection = _selection(layers)
    recorder = Probe(model, selection, grad=grad, bins=bins, near_zero=t.near_zero,
                         saturation_cut=t.saturation_cut, blocks=blocks, groups=groups)
    with preserved(model, inputs, grads=grad), recorder.hooks(inputs):
        with torch.enable_grad() if grad else torch.no_grad():
            out = recorder.forward(inputs)
            recorder.check_measured()
            values = None
            if grad:
                values = _losses(select_output(out, output), targets, loss, groups)
                # the output is not kept through the backward pass (a language model's logits
                # are its largest tensor), as a training step keeps only its loss
                del out
                if values.requires_grad:
                    values.sum().backward()
                else:
                    recorder.grad = False  # nothing upstream of the loss is differentiable
        with torch.no_grad():
            return recorder.collect(values)


def repeated_blocks(model: nn.Module) -> set[int]:
    """ids of the children of an nn.ModuleList or nn.Sequential that holds two or more modules
    of one class that have submodules of their own (transformer layers, residual blocks)."""
    ids: set[int] = set()
    for container in model.modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        children = [c for c in container.children() if next(c.children(), None) is not None]
        counts = Counter(type(c) for c in children)
        ids.update(id(c) for c in children if counts[type(c)] >= 2)
    return ids


def convolutional(model: nn.Module) -> set[int]:
    """ids of the modules that hold a CHANNEL_TYPES module (themselves included): their
    outputs' unit is the channel. One walk of the tree (a module shared by two parents is
    counted once)."""
    ids: set[int] = set()
    seen: set[int] = set()

    def walk(module: nn.Module) -> bool:
        if id(module) in seen:
            return id(module) in ids
        seen.add(id(module))
        found = isinstance(module, CHANNEL_TYPES)
        for child in module.children():
            found = walk(child) or found
        if found:
            ids.add(id(module))
        return found

    walk(model)
    return ids


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's (NORM_TYPES), or any module without submodules whose class
    name says it normalises (`...Norm`, `...Norm1d`: Hugging Face's LlamaRMSNorm, T5LayerNorm,
    Qwen2RMSNorm, ...), so that actstat never imports the library that defines it. Its output
    starts a new scale (actstat/analysis.py)."""
    if isinstance(module, NORM_TYPES):
        return True
    return (re.search(r"Norm(\d[dD])?$", type(module).__name__) is not None
            and next(module.children(), None) is None and not is_weight_layer(module))


def is_attention(module: nn.Module) -> bool:
    """An attention module: nn.MultiheadAttention, or a class named `...Attention` (Hugging
    Face's GPT2Attention, LlamaAttention, BertSelfAttention, ...). Its output is measured (a row
    of kind `attention`), and the softmax (or scaled-dot-product attention) it calls gives the
    entropy of its attention and its largest logit (actstat/stream.py)."""
    return (isinstance(module, nn.MultiheadAttention)
            or type(module).__name__.endswith("Attention"))


def eager(model: nn.Module) -> nn.Module:
    """The module whose forward hooks see every layer run: a `torch.compile`d model's original
    module (`_orig_mod`: its compiled graph would be traced again for every hook, and the
    numbers are the same to float rounding); a TorchScript model, whose graph runs without its
    submodules' hooks, is refused in one line."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"{type(model).__name__} is a TorchScript model (torch.jit.script or "
                         "torch.jit.trace), whose compiled graph runs without the hooks that "
                         "measure its layers: profile the nn.Module before it is scripted")
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        return original
    return model


def is_weight_layer(module: nn.Module) -> bool:
    """A module whose output is a weight layer's: WEIGHT_TYPES, a `transposed_linear`, or a
    `stacked` layer."""
    return isinstance(module, WEIGHT_TYPES) or transposed_linear(module) or stacked(module)


def stacked(module: nn.Module) -> bool:
    """A weight layer of K models side by side (actstat.model.StackedLinear: weight (K, out,
    in)), which says so with a class attribute `stacked = True`: the engine measures the
    modules it is given and imports no model module."""
    weight = getattr(module, "weight", None)
    return (getattr(type(module), "stacked", False) is True and isinstance(weight, torch.Tensor)
            and weight.dim() == 3)


def transposed_linear(module: nn.Module) -> bool:
    """Hugging Face's `Conv1D` (GPT-2, GPT): a linear layer whose weight is stored (in, out),
    x @ W + b. Known by its class name, its 2-D weight and `nf` (its outputs), so that actstat
    never imports transformers."""
    if type(module).__name__ != "Conv1D":
        return False
    weight = getattr(module, "weight", None)
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2
            and getattr(module, "nf", None) == weight.shape[1])


@dataclass(slots=True)
class _Pending:
    """A tensor the capture has seen come out of a module (weakly held): its version when it
    was measured (None: not measured), whether its unit is the channel, and whether the next
    module called with it is measured as its consumer."""

    ref: weakref.ref
    version: int | None
    channels: bool
    consumer: bool
    source: str | None = None  # the weight or norm layer call whose output it is
    record: _Record | None = None  # the record that measured it


class _Module(NamedTuple):
    """What the hooks need to know of a module, found once per pass on its first call."""

    name: str
    weight: bool  # is_weight_layer
    inputs: bool  # a weight layer whose floating-point input may be recorded (not Embedding)
    norm: bool
    block: bool
    pass_through: bool
    convolutional: bool  # holds a CHANNEL_TYPES module: its output's unit is the channel
    channel_type: bool
    rules: Activation | None  # activations.describe: its dead (floor) and saturation rules
    leaf: bool  # no submodules: may consume a tensor (an activation)
    attention: bool  # is_attention


@dataclass(slots=True)
class _Call:
    module: int  # id of the module called
    name: str
    consumer: bool  # consumes a weight or norm layer's output
    consumes: str | None  # that layer's call name
    channels: bool  # its input is a feature map whose unit is the channel
    hand_on: _Pending | None  # a pass-through module's input that awaits its consumer
    consumed: _Pending | None = None  # the tensor it consumes, and its shape
    shape: tuple[int, ...] = ()
    stream_in: bool = False  # called with its block's stream (a post-norm's norm)
    attention: Row | None = None  # entropy per head and the largest logit (stream.py)


@dataclass(slots=True)
class _Frame:
    """A repeated block being run: its call name, the tensors that are its stream (by id,
    weakly held: its input, and what adds onto it and post-norms make of it), the branches
    measured at their add."""

    name: str
    stream: dict[int, weakref.ref]
    channels: bool = False  # its stream is a feature map whose unit is the channel
    branches: int = 0  # branches measured at their add (no record held them)
    adds: int = 0  # adds of a branch onto the stream


@dataclass(slots=True)
class _Record:
    name: str
    kind: str
    module: nn.Module
    shape: tuple[int, ...]
    unit_dim: int
    stats: list[Row]  # per group: MOMENTS, dead, [spread], [saturated], [histogram]
    saturation: bool
    spread: bool
    consumes: str | None = None  # an activation record: the weight or norm call it consumes
    grad: list[Row] | None = None  # per group: (mean, std) once backward reached the tensor
    differentiable: bool = False
    stream: str | None = None  # "start": the first block's input; "block": a block's output
    block: str | None = None  # the residual block call whose output it is
    branch: list[Row] | None = None  # per group: rms(branch) / rms(stream) at its add
    attention: Row | None = None  # per head: mean normalised entropy; then the largest logit


# lsuv's step (actstat/lsuv.py): (module, its name, its output, a function that runs the
# module again on the same input) -> the output the forward goes on with
WeightStep = Callable[[nn.Module, str, torch.Tensor, Callable[[], Any]], torch.Tensor]
# a histogram's range: (record name, group, the activation that made the tensor (its range) or
# None, the tensor's min and max as 0-d tensors on its device) -> (low, high), 0-d tensors there
# too: nothing is read on the host
HistRange = Callable[[str, int, Activation | None, torch.Tensor, torch.Tensor],
                     tuple[torch.Tensor, torch.Tensor]]


class Probe:
    """The measurement engine: the hooks of a pass over one model (or a stack of K: `groups`)
    and what they measured. `capture` makes one pass with it; `actstat train` one per recorded
    step (`hooks()` starts a fresh pass each time, `collect` ends it); lsuv's step runs inside
    its hooks (`weight_step`), so that every path finds layers the same way.

    `weights`: measure each weight's gradient and the weight itself (`capture` does; the
    training recorder, which shows neither, does not). `hist_range`: where `bins` counts of a
    tensor fall (default: its own [min, max]; values outside go to the end bins)."""

    def __init__(self, model: nn.Module, selection: tuple[tuple[type, ...], tuple[str, ...]] | None,
                 *, grad: bool, bins: int, near_zero: float, saturation_cut: float,
                 blocks: Sequence[nn.Module] = (), groups: int = 0, weights: bool = True,
                 weight_step: WeightStep | None = None, hist_range: HistRange | None = None):
        model = eager(model)
        self.model = model
        self.groups = groups
        self.selection = selection
        self.grad = grad
        self.bins = bins
        self.near_zero = near_zero
        self.cut = saturation_cut
        self.weights = weights
        self.weight_step = weight_step
        self.hist_range = hist_range
        self.names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}
        self.blocks = repeated_blocks(model) | {id(block) for block in blocks}
        self.convolutional = convolutional(model)
        self.modules: dict[int, _Module] = {}
        self.scratch = Scratch()  # one buffer for every reduction of every pass
        self.zeros: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        # the adds onto a residual stream and the attention in a model that has blocks or
        # attention modules are seen through torch's function mode (actstat/stream.py),
        # entered while the model's forward runs (its outermost call) and left after it
        self.watched = bool(self.blocks) or any(is_attention(m) for m in model.modules())
        self.watch = None
        self.reset()

    def reset(self) -> None:
        """Forget the last pass: its calls, tensors and records."""
        self.paused = False
        self.calls: dict[int, int] = {}
        self.stack: list[_Call] = []
        self.tensors: dict[int, _Pending] = {}
        self.records: list[_Record] = []
        self.ran: list[str] = []
        self.data: tuple[torch.Tensor, ...] = ()  # the model's inputs: never an input record
        self.frames: list[_Frame] = []  # the blocks being run, innermost last
        self.started = False  # the first block's input has been looked at
        self.watch: Watch | None = None  # entered while the model's forward runs

    # -- hooks ------------------------------------------------------------------------------

    @contextmanager
    def hooks(self, inputs: Any = ()) -> Iterator[None]:
        """A fresh pass: a forward pre-hook and a forward hook on every module, removed whatever
        happens. The tensors of `inputs` (the data) are never measured as a layer's input. The
        only place in actstat that hooks a model (tests/test_engine.py holds it to that)."""
        self.reset()
        self.data = tuple(_tensors(inputs))
        handles = []
        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
                handles.append(module.register_forward_hook(self._after, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._unwatch()

    def _unwatch(self) -> None:
        if self.watch is not None:
            watch, self.watch = self.watch, None
            watch.__exit__(None, None, None)

    def forward(self, inputs: Any) -> Any:
        """The model's output on `inputs`; a failure names the module it happened in."""
        self.data = tuple(_tensors(inputs))
        try:
            if isinstance(inputs, Mapping):
                return self.model(**inputs)
            if isinstance(inputs, (tuple, list)):
                return self.model(*inputs)
            return self.model(inputs)
        except ActstatError:
            raise  # said by actstat itself (lsuv's step): as it is
        except Exception as error:
            where = (f"in {self.stack[-1].name} ({type(self._module(self.stack[-1])).__name__})"
                     if self.stack else "")
            raise ModelError(f"the forward pass failed {where} on inputs of shape "
                             f"{_shapes(inputs)}: {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}") from error

    def _module(self, call: _Call) -> nn.Module:
        base = call.name.split("#")[0]
        return next(m for m in self.model.modules() if self.names[id(m)] == base)

    def _describe(self, module: nn.Module) -> _Module:
        key = id(module)
        weight = is_weight_layer(module)
        leaf = next(module.children(), None) is None
        info = _Module(self.names.get(key, type(module).__name__), weight,
                       weight and not isinstance(module, nn.Embedding),
                       is_norm(module), key in self.blocks,
                       isinstance(module, PASS_THROUGH), key in self.convolutional,
                       isinstance(module, CHANNEL_TYPES), describe(module), leaf,
                       is_attention(module))
        self.modules[key] = info
        return info

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.paused:
            return
        # the hooks' own tensor work is not the model's: the function mode does not see it
        with unwatched(self.watch):
            self._look_before(module, args, kwargs)

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if self.paused:
            return None
        with unwatched(self.watch):
            replaced = self._look_after(module, args, kwargs, out)
        if not self.stack:
            self._unwatch()  # the forward's outermost call has returned
        return replaced

    def _look_before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        key = id(module)
        info = self.modules.get(key) or self._describe(module)
        if not self.stack and self.watched and self.watch is None:
            self.watch = Watch(active=self._watching, is_stream=self._is_stream,
                               mark=self._mark, on_add=self._on_add,
                               in_attention=self._in_attention, on_attention=self._on_attention)
            self.watch.__enter__()
        count = self.calls[key] = self.calls.get(key, 0) + 1
        name = info.name if count == 1 else f"{info.name}#{count}"
        self.ran.append(name)
        x = first_tensor(args) if args else first_tensor(kwargs)
        seen = self._seen(x)
        consumer, hand_on, consumes, consumed = False, None, None, None
        if seen is not None and seen.consumer:
            if info.pass_through:
                # its children, or the module after it, consume the tensor
                hand_on = seen
            elif (info.leaf and not info.weight and not info.norm
                  and (seen.version is None or seen.version == x._version)):
                # an activation: a module of its own (no submodules) called with the tensor as
                # it came out (not after an in-place add onto it); `_after` checks its shape
                consumer, seen.consumer, consumes, consumed = True, False, seen.source, seen
        stream_in = bool(self.frames) and x is not None and self._is_stream(x)
        self.stack.append(_Call(key, name, consumer, consumes,
                                seen is not None and seen.channels, hand_on, consumed,
                                tuple(x.shape) if consumed is not None else (), stream_in))
        if (info.block and not self.started and self.selection is None and x is not None
                and x.is_floating_point()):
            # the stream's start: the first block's input (a token model's summed embeddings)
            self.started = True
            if ((seen is None or seen.version != x._version or seen.record is None)
                    and not any(x is t for t in self.data)):
                self._measure(module, f"{name}:input", "input", x, channels=(
                    x.dim() - bool(self.groups) >= 3 and info.convolutional), rules=None)
                seen = self._seen(x)
            if seen is not None and seen.record is not None:
                seen.record.stream = "start"
        if info.block and x is not None:
            self.frames.append(_Frame(name, {id(x): weakref.ref(x)}, channels=(
                x.dim() - bool(self.groups) >= 3 and info.convolutional)))
        elif (info.inputs and x is not None and x.is_floating_point()
                and (seen is None or seen.version != x._version) and self.selection is None
                and not any(x is t for t in self.data)):
            # `version`: an in-place op since it was measured changed it
            self._measure(module, f"{name}:input", "input", x, channels=(
                x.dim() - bool(self.groups) >= 3 and info.channel_type), rules=None)

    def _look_after(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        # calls whose forward raised and whose caller caught it never reach their forward hook
        while len(self.stack) > 1 and self.stack[-1].module != id(module):
            self.stack.pop()
        call = self.stack.pop()
        info = self.modules[call.module]
        frame = (self.frames.pop() if info.block and self.frames
                 and self.frames[-1].name == call.name else None)
        # a repeated block with a branch added onto its input is a residual block: its output is
        # the stream (a repeated block without one, such as a conv-norm-act layer, is not)
        residual = frame is not None and frame.adds > 0
        x = first_tensor(out)
        if x is None or not x.is_floating_point():
            return None
        if call.consumer and tuple(x.shape) != call.shape:
            # it only read the tensor (its dtype or device: a rotary embedding's table), or
            # reshaped it: not the tensor's activation, which may still come
            call.consumer = False
            if call.consumed is not None:
                call.consumed.consumer = True
        kind = self._kind(info, call)
        if self.selection is not None:
            kind = (kind or "selected") if self._selected(module, call.name) else None
        channels = x.dim() - bool(self.groups) >= 3 and (call.channels or info.convolutional)
        replaced = None
        if info.weight and self.weight_step is not None and x is out:
            replaced = x = self.weight_step(module, call.name, x,
                                            lambda: self._again(module, args, kwargs))
        if kind in ("block", "attention") and self.selection is None:
            seen = self._seen(x)
            if seen is not None and seen.record is not None and seen.version == x._version:
                # measured already and unchanged (an attention module's output is its output
                # projection's; a post-norm block's is its norm's): no second row of it
                if residual:
                    record = seen.record
                    if record.kind == "norm":
                        # a post-norm block's output is its norm's: one row, the block's
                        record.name, record.kind, record.module = call.name, "block", module
                    record.stream, record.block = "block", call.name
                if call.attention is not None:
                    seen.record.attention = call.attention
                kind = None
        if kind is not None:
            if self.grad and not x.requires_grad:
                # a tensor no parameter upstream of it trains (frozen layers, data): x + 0
                # gives the graph a node whose gradient is dL/dx, and the same values
                zero = self._zero(x)
                new = x + zero
                replaced = _replace(out, x, new)
                if replaced is not None:
                    x = new
            record = self._measure(module, call.name, kind, x, channels,
                                   info.rules if kind in ("activation", "selected") else None,
                                   consumes=call.consumes if kind == "activation" else None)
            if residual:
                record.stream, record.block = "block", call.name
            record.attention = call.attention
        if call.stream_in and info.norm:
            self._mark(x)  # a post-norm block's stream is its norm's output
        consumer = info.weight or info.norm
        source = call.name if consumer else None
        if call.hand_on is not None and call.hand_on.consumer and call.hand_on.ref() is not x:
            # nothing inside consumed it and a new tensor comes out (dropout in train mode)
            call.hand_on.consumer, consumer, source = False, True, call.hand_on.source
        if consumer or channels:
            seen = self._seen(x)
            if seen is not None:
                seen.channels, seen.consumer, seen.source = channels, consumer, source
            else:
                self.tensors[id(x)] = _Pending(weakref.ref(x), None, channels, consumer, source)
        return replaced

    # -- the stream and attention (actstat/stream.py calls these) ---------------------------

    def _watching(self) -> bool:
        return not self.paused

    def _is_stream(self, t: torch.Tensor) -> bool:
        """Whether `t` (or the tensor it is a view of) is the innermost block's stream."""
        if not self.frames:
            return False
        stream = self.frames[-1].stream
        for candidate in (t, t._base):
            if candidate is not None:
                ref = stream.get(id(candidate))
                if ref is not None and ref() is candidate:
                    return True
        return False

    def _mark(self, t: torch.Tensor) -> None:
        if self.frames:
            self.frames[-1].stream[id(t)] = weakref.ref(t)

    def _on_add(self, branch: torch.Tensor, stream: torch.Tensor) -> None:
        """A branch about to be added to the stream: rms(branch) / rms(stream), per group, on
        the record of the branch (measured here if no record holds it yet)."""
        frame = self.frames[-1]
        frame.adds += 1
        seen = self._seen(branch)
        record = seen.record if seen is not None and seen.version == branch._version else None
        if record is None and self.selection is not None:
            return  # only what was selected is measured
        if record is None:
            frame.branches += 1
            suffix = "" if frame.branches == 1 else f"{frame.branches}"
            # a sum or a product, not an activation: its dead units are not counted
            record = self._measure(self.model, f"{frame.name}:branch{suffix}", "branch", branch,
                                   channels=frame.channels, rules=NOT_AN_ACTIVATION)
        stream_seen = self._seen(stream)
        of_stream = (stream_seen.record if stream_seen is not None
                     and stream_seen.version == stream._version else None)
        record.branch = [_ratio(b, s) for b, s in zip(self._rms(branch, record),
                                                       self._rms(stream, of_stream))]

    def _rms(self, t: torch.Tensor, record: _Record | None) -> list[float | torch.Tensor]:
        """Per group, the root mean square of `t`: √(mean² + std²) of the numbers `record`
        already holds of it (the same tensor, unchanged), else read again (stream.rms)."""
        if record is not None:
            return [math.hypot(row[0], row[1]) if isinstance(row, list)
                    else torch.hypot(row[0], row[1]) for row in record.stats]
        values = rms(t.detach(), self.groups)
        return list(values.unbind(0)) if self.groups else [values.reshape(())]

    def _in_attention(self) -> bool:
        return bool(self.stack) and self.modules[self.stack[-1].module].attention

    def _on_attention(self, numbers: torch.Tensor) -> None:
        self.stack[-1].attention = numbers

    def _again(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The module's output computed afresh on the same input, unseen by the hooks."""
        self.paused = True
        try:
            return first_tensor(module(*args, **kwargs))
        finally:
            self.paused = False

    def _kind(self, info: _Module, call: _Call) -> str | None:
        if info.weight:
            return "weight"
        if info.norm:
            return "norm"
        if info.attention:
            return "attention"
        if info.block:
            return "block"
        if call.consumer:
            return "activation"
        return None

    def _selected(self, module: nn.Module, name: str) -> bool:
        """A module that `layers=` names: by class (a type, or a pattern on the names of its
        class and its bases: `GPT2Block`, `*Attention`, outside torch.nn too) or by a pattern
        on its module path."""
        assert self.selection is not None
        types, patterns = self.selection
        base = name.split("#")[0]
        classes = [c.__name__ for c in type(module).__mro__ if c not in (nn.Module, object)]
        return isinstance(module, types) or any(
            fnmatchcase(base, p) or any(fnmatchcase(c, p) for c in classes) for p in patterns)

    def _seen(self, x: torch.Tensor | None) -> _Pending | None:
        """What the capture knows of `x`: a tensor it measured, unchanged since or changed by
        in-place ops only (the same tensor object)."""
        if x is None:
            return None
        entry = self.tensors.get(id(x))
        if entry is not None and entry.ref() is x:
            return entry
        base = x._base  # a view of the whole of a tensor it has seen (`.view(shape)`)
        if base is not None and base.numel() == x.numel() and base.data_ptr() == x.data_ptr():
            entry = self.tensors.get(id(base))
            return entry if entry is not None and entry.ref() is base else None
        return None

    def _zero(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self.zeros:
            self.zeros[key] = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        return self.zeros[key]

    # -- reductions -------------------------------------------------------------------------

    def _measure(self, module: nn.Module, name: str, kind: str, x: torch.Tensor, channels: bool,
                 rules: Activation | None, consumes: str | None = None) -> _Record:
        groups = self._groups(x.detach())  # detached: no graph
        sample = groups[0]
        unit = 1 if channels else max(sample.dim() - 1, 0)
        spread = kind == "weight"
        stats = [self._reduce(group, unit, spread, rules) for group in groups]
        if self.bins:
            stats = [self._with_histogram(name, k, group, row, rules)
                     for k, (group, row) in enumerate(zip(groups, stats))]
        saturation = rules is not None and rules.saturation_edges(self.cut) is not None
        record = _Record(name, kind, module, tuple(sample.shape), unit, stats, saturation,
                         spread, consumes)
        self.records.append(record)
        seen = self._seen(x)
        if seen is not None:
            seen.version, seen.record = x._version, record
        else:
            self.tensors[id(x)] = _Pending(weakref.ref(x), x._version, channels, False,
                                           record=record)
        if self.grad and x.requires_grad:
            record.differentiable = True
            x.register_hook(lambda g, record=record: self._on_grad(record, g))
        return record

    def _groups(self, t: torch.Tensor) -> list[torch.Tensor]:
        """`t` as the list of its groups: itself for one model, t[0], ..., t[K-1] for a stack."""
        return list(t.unbind(0)) if self.groups else [t]

    def _reduce(self, x: torch.Tensor, unit: int, spread: bool,
                rules: Activation | None) -> Row:
        """MOMENTS, dead, [spread], [saturated], [histogram] of `x` as one float64 vector (host
        floats from the kernel, without a histogram). `rules`: the activation that made `x`
        (activations.describe), for its dead and saturation rules; None: a unit is dead when
        it is exactly 0 throughout.

        The tensor is reduced a chunk of samples at a time (see CHUNK): every statistic of a
        chunk while it is in the caches, the chunks' numbers combined at the end (extremes,
        counts and dead units exactly; mean and std as `_Moments` says)."""
        if x.dim() == 0:
            x = x.reshape(1)
        channels = unit != x.dim() - 1
        # (samples, units), or (batch, channels, positions) with the positions contiguous
        view = (x.reshape(x.shape[0], x.shape[1], -1) if channels
                else _rows(x).reshape(-1, x.shape[-1]))
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        edges = rules.saturation_edges(self.cut) if rules is not None else None
        # the dead rule: a known activation's floor (a unit never above it), none for a known
        # activation without a flat region (not counted: NaN), exactly 0 for any other module
        floor = rules.floor if rules is not None else None
        count_dead = rules is None or floor is not None
        if fused.takes(view):
            row = _fused_row(view, channels, spread, edges, self.near_zero, units=count_dead,
                             floor=floor)
            if row is not None:
                return row
        step = max(1, _chunk_size(x) // max(view[0].numel(), 1))
        scratch = self.scratch(view[:step])
        moments = _Moments()
        los, his, near, magnitude = [], [], [], []
        saturated, unit_top, sample_lo, sample_hi = [], [], [], []
        for chunk in _chunks(view, step):
            if spread:  # each sample's (and position's) extremes across units, and the chunk's
                sample_lo.append(chunk.amin(dim=1).reshape(-1))
                sample_hi.append(chunk.amax(dim=1).reshape(-1))
                lo, hi = sample_lo[-1].amin(), sample_hi[-1].amax()
            else:
                lo, hi = torch.aminmax(chunk)
            lo, hi = lo.to(acc), hi.to(acc)
            los.append(lo)
            his.append(hi)
            flat = exact(chunk).reshape(-1)
            work = scratch[:flat.numel()]
            moments.add(flat, lo, hi, work)
            if floor is not None:  # each unit's largest value: dead when it is at the floor
                unit_top.append(chunk.amax(dim=2).amax(dim=0) if channels else chunk.amax(dim=0))
            torch.abs(flat, out=work)
            magnitude.append(work.sum())  # (before the near-zero test overwrites |x|)
            if rules is None:  # each unit's max|x| (0: the unit is 0 throughout), from |x|
                top = work.view(chunk.shape)
                unit_top.append(top.amax(dim=2).amax(dim=0) if channels else top.amax(dim=0))
            near.append(_count(work.lt_(self.near_zero)))
            if edges is not None:
                fraction = saturated_fraction(flat.unsqueeze(0), edges, work.unsqueeze(0))[0]
                saturated.append(fraction.to(torch.float64) * flat.numel())
        f64 = torch.float64
        count = x.numel()
        lo, hi = torch.stack(los).amin(), torch.stack(his).amax()
        mean, std = moments.result()
        if count_dead:
            top = torch.stack(unit_top).amax(dim=0)
            # compared in x's dtype, as the kernel compares (a float32 relu - 0.5 sits at -0.5)
            dead = (top <= floor if floor is not None else top == 0).to(f64).mean()
        else:
            dead = torch.full((), math.nan, dtype=f64, device=x.device)  # (no host copy)
        parts = [mean, std, lo.to(f64), hi.to(f64), torch.stack(near).to(f64).sum() / count,
                 torch.stack(magnitude).to(f64).sum() / count, dead]
        if spread:
            parts.append(unit_spread(torch.cat(sample_lo).to(acc).unsqueeze(0),
                                     torch.cat(sample_hi).to(acc).unsqueeze(0),
                                     lo.reshape(1), hi.reshape(1))[0].to(f64))
        if edges is not None:
            parts.append(torch.stack(saturated).sum() / count)
        return torch.stack([p.reshape(()) for p in parts])

    def _with_histogram(self, name: str, group: int, x: torch.Tensor, row: Row,
                        rules: Activation | None) -> Row:
        """`row` and `bins` counts of `x` after it, over [min, max] (row[2], row[3]), or over
        `hist_range`'s range (values outside it counted in the end bins)."""
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        if isinstance(row, list):  # the kernel's (a CPU tensor's)
            lo, hi = torch.tensor(row[2:4], dtype=acc)
        else:
            lo, hi = row[2], row[3]
        if self.hist_range is not None:
            lo, hi = self.hist_range(name, group, rules, lo, hi)
        counts = group_histogram(x.reshape(1, -1), lo.reshape(1), hi.reshape(1), self.bins)[0]
        return torch.cat([torch.as_tensor(row, dtype=torch.float64, device=counts.device),
                          counts])

    def _moments(self, t: torch.Tensor) -> Row:
        """(mean, std, min, max) of every value of `t` (float64; host floats from the kernel),
        a chunk at a time (a gradient or a weight: no near-zero count, no units)."""
        flat = t.reshape(-1)
        if fused.takes(t):
            # a row per sample (or output unit of a weight): long rows, few segments (rows of
            # the last dim, a 28-wide feature map's, cost a segment's fixed work every 28
            # values: the CNN's backward took 1.33 times a bare one), and samples for the
            # threads to share
            view = t.reshape(t.shape[0], -1) if t.dim() > 1 else flat.reshape(1, -1)
            row = _fused_row(view, False, False, None, 0.0, units=False)
            if row is not None:
                return row[:4]
        step = _chunk_size(flat)
        scratch = self.scratch(flat[:step])
        moments, los, his = _Moments(), [], []
        for chunk in _chunks(flat, step):
            chunk = exact(chunk)
            lo, hi = torch.aminmax(chunk)
            moments.add(chunk, lo, hi, scratch[:chunk.numel()])
            los.append(lo)
            his.append(hi)
        mean, std = moments.result()
        return torch.stack([mean, std, torch.stack(los).amin().to(torch.float64),
                            torch.stack(his).amax().to(torch.float64)])

    def _on_grad(self, record: _Record, g: torch.Tensor) -> None:
        with torch.no_grad():
            record.grad = [self._moments(group)[:2] for group in self._groups(g.detach())]

    # -- results ----------------------------------------------------------------------------

    def check_measured(self) -> None:
        if self.records:
            return
        ran = ", ".join(self.ran[:8]) + (", ..." if len(self.ran) > 8 else "")
        if self.selection is not None:
            types, patterns = self.selection
            asked = ", ".join([t.__name__ for t in types] + list(patterns))
            classes = sorted({type(m).__name__ for m in self.model.modules()
                              if id(m) in self.modules})
            # named as the API, the CLI and a config spell it: this runs under all three
            raise ModelError(f"no module of {type(self.model).__name__} matched layers= "
                             f"(--layers, model.layers) {asked}: the modules that ran are {ran} "
                             f"(classes: {', '.join(classes)})")
        raise ModelError(f"nothing to measure in {type(self.model).__name__}: no weight layer "
                         "(Linear, Conv, Embedding), normalisation layer or repeated block "
                         f"returned a floating-point tensor (modules that ran: {ran}); "
                         "choose modules with layers= (--layers, model.layers)")

    def collect(self, losses: torch.Tensor | None,
                extra: torch.Tensor | None = None) -> list[Capture]:
        """Every record's numbers in one host copy: a Capture per group (one for one model).
        `losses`: each group's loss, a (K,) vector (one value for one model), or None;
        `extra`: the caller's (K, m) numbers, fetched in the same copy (Capture.extra)."""
        weights: dict[int, tuple[list[Row], bool] | None] = {}
        rows: list[Row] = []
        for group in range(max(self.groups, 1)):
            for record in self.records:
                rows.append(record.stats[group])
                if record.branch is not None:
                    rows.append(record.branch[group])
                if record.attention is not None:
                    rows.append(record.attention)
                if not self.grad:
                    continue
                rows.append(record.grad[group] if record.grad is not None else [0.0, 0.0])
                entry = self._weights(record, weights) if self.weights else None
                if entry is not None:
                    rows.append(entry[0][group])
        k = max(self.groups, 1)
        if losses is not None:
            rows.append(losses.detach().reshape(-1).to(torch.float64))
        if extra is not None:
            rows.append(extra.detach().reshape(-1).to(torch.float64))
        host = iter(_host(rows))
        captures = [self._unpack(host, weights) for _ in range(k)]
        if losses is not None:
            values = list(islice(host, k))
            captures = [replace(c, loss=value) for c, value in zip(captures, values)]
        if extra is not None:
            width = extra.numel() // k
            captures = [replace(c, extra=tuple(islice(host, width))) for c in captures]
        return captures

    def _weights(self, record: _Record, weights: dict[int, tuple[list[Row], bool] | None]
                 ) -> tuple[list[Row], bool] | None:
        """The weight numbers of a record's module (computed once per module; a module called
        twice shows its one weight gradient on each call), None for an input record: the
        weight belongs with the layer's output."""
        if record.kind in ("input", "branch"):
            return None
        # by the weight itself: a weight tied to two modules (GPT-2's embedding and its head)
        # is read once
        weight = _weight_of(record.module)
        key = id(weight) if weight is not None else id(record.module)
        if key not in weights:
            weights[key] = self._weight(record.module)
        return weights[key]

    def _weight(self, module: nn.Module) -> tuple[list[Row], bool] | None:
        """((std, min, max) of dL/dW and std(W) per group, trainable) for a module with a
        weight parameter (a stacked layer's weight[k] is group k's; nn.MultiheadAttention's
        `in_proj_weight`); None when it has none."""
        weight = _weight_of(module)
        if weight is None:
            return None
        grouped = self.groups and stacked(module)
        per_group = list(weight.detach().unbind(0)) if grouped else [weight.detach()]
        grads = ([None] * len(per_group) if weight.grad is None
                 else list(weight.grad.detach().unbind(0)) if grouped else [weight.grad.detach()])
        rows: list[Row] = []
        for data_t, grad_t in zip(per_group, grads):
            data = self._moments(data_t)
            # no gradient: frozen (reported as None), or trainable but not reached by backward: 0
            grad = self._moments(grad_t) if grad_t is not None else [0.0, 0.0, 0.0, 0.0]
            if isinstance(data, list) and isinstance(grad, list):
                rows.append([*grad[1:4], data[1]])
                continue
            device = data.device if isinstance(data, torch.Tensor) else weight.device
            grad, data = (torch.as_tensor(r, dtype=torch.float64, device=device)
                          for r in (grad, data))
            rows.append(torch.cat([grad[1:4], data[1:2]]))
        if len(rows) == 1 and self.groups > 1:  # a layer the groups share
            rows *= self.groups
        return rows, weight.requires_grad

    def _unpack(self, host: Iterator[float],
                weights: dict[int, tuple[list[Row], bool] | None]) -> Capture:
        """One group's Capture, its numbers taken from `host` in `collect`'s order."""
        layers = []
        for record in self.records:
            keys = (MOMENTS + ("dead",) + (("spread",) if record.spread else ())
                    + (("saturated",) if record.saturation else ()))
            stats = dict(zip(keys, islice(host, len(keys))))
            histogram = tuple(islice(host, self.bins)) if self.bins else None
            branch = next(host) if record.branch is not None else None
            attention = (tuple(islice(host, record.attention.numel()))
                         if record.attention is not None else None)
            grad: dict[str, float | None] | None = None
            if self.grad:
                grad = dict(zip(GRAD, islice(host, 2)))
                entry = self._weights(record, weights) if self.weights else None
                if entry is not None:
                    values = list(islice(host, len(WEIGHT_GRAD)))
                    trainable = entry[1]
                    grad.update({k: (v if trainable or k == "weight_data_std" else None)
                                 for k, v in zip(WEIGHT_GRAD, values)})
                    ratio = None
                    if trainable and values[3] > 0 and all(map(math.isfinite, values)):
                        ratio = values[0] / values[3]
                    grad["grad_to_data"] = ratio
                if not record.differentiable:
                    grad = None
            layers.append(CapturedLayer(record.name, record.kind, type(record.module).__name__,
                                        record.shape, record.unit_dim,
                                        self._weight_shape(record), stats, grad, histogram,
                                        record.consumes, stream=record.stream, branch=branch,
                                        attention=attention, block=record.block))
        return Capture(tuple(layers), None)

    def _weight_shape(self, record: _Record) -> tuple[int, ...] | None:
        """A record's weight in torch.nn.init's layout (out, in, *kernel), one group's of a
        stacked layer; None for an input record or a module without a weight."""
        weight = getattr(record.module, "weight", None)
        if not isinstance(weight, nn.Parameter) or record.kind in ("input", "branch"):
            return None
        if transposed_linear(record.module):
            return tuple(weight.T.shape)
        return tuple(weight.shape[1:] if self.groups and stacked(record.module) else weight.shape)


@contextmanager
def preserved(model: nn.Module, inputs: Any, grads: bool = True) -> Iterator[None]:
    """Dropout off for the pass (`STOCHASTIC` modules in eval mode), and the model left as it
    was: `training` (every module's), buffers (a forward in train mode
    moves BatchNorm's running statistics), and (`grads`: for a pass with a backward) the `.grad`
    of every parameter and input tensor, which are set aside so that the pass's backward
    accumulates into fresh tensors."""
    modes = [(m, m.training) for m in model.modules()]
    for module, _ in modes:  # dropout measured off, BatchNorm left as it is (docs/models.md)
        if module.training and isinstance(module, STOCHASTIC):
            module.training = False
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    leaves = (list(model.parameters()) + [t for t in _tensors(inputs) if t.requires_grad]
              if grads else [])
    saved_grads = [(t, t.grad) for t in leaves]
    for t in leaves:
        t.grad = None
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for t, saved_grad in saved_grads:
            t.grad = saved_grad
        for module, mode in modes:
            if module.training != mode:  # (nn.Module's __setattr__ is slow: only where moved)
                module.training = mode


def _weight_of(module: nn.Module) -> nn.Parameter | None:
    """A module's weight Parameter (nn.MultiheadAttention's `in_proj_weight`), or None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter):
        weight = getattr(module, "in_proj_weight", None)
    return weight if isinstance(weight, nn.Parameter) else None


def _selection(layers: Any) -> tuple[tuple[type, ...], tuple[str, ...]] | None:
    if layers is None:
        return None
    items = [layers] if isinstance(layers, (str, type)) else list(layers)
    types = tuple(i for i in items if isinstance(i, type) and issubclass(i, nn.Module))
    patterns = tuple(i for i in items if isinstance(i, str))
    if len(types) + len(patterns) != len(items) or not items:
        raise ModelError("layers= takes nn.Module classes and name patterns (e.g. nn.Conv2d, "
                         f"'blocks.*'), got {layers!r}")
    return types, patterns


class _Moments:
    """Mean and population std of a tensor reduced a chunk at a time: each chunk's centred
    squares taken of values scaled by the chunk's max|x| (finite for any finite input, as in
    probe.group_moments) and summed by torch's cascade sum, not a BLAS dot (see group_moments);
    the chunks combined by Chan, Golub and LeVeque's pairwise update, in float64 and in units of
    the largest max|x|."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []
        self.squares: list[torch.Tensor] = []
        self.scales: list[torch.Tensor] = []
        self.sizes: tuple[int, int] = (0, 0)  # the first chunk's, and every other's

    def add(self, flat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
            work: torch.Tensor) -> None:
        """One chunk: its values (float32 or float64), its extremes, a buffer as large."""
        dtype = flat.dtype
        n = flat.numel()
        total = flat.sum()
        scale = torch.maximum(lo.abs(), hi.abs()).to(dtype).clamp_(torch.finfo(dtype).tiny,
                                                                   torch.finfo(dtype).max)
        torch.sub(flat, total / n, out=work).mul_(scale.reciprocal())
        self.sums.append(total)
        self.squares.append(work.square_().sum())
        self.scales.append(scale)
        self.sizes = (self.sizes[0] or n, n)  # (chunks() hands the short one first)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        f64 = torch.float64
        if len(self.sums) == 1:  # most tensors: no combine (a dozen small ops saved per record)
            n = self.sizes[0]
            scale = self.scales[0].to(f64)
            return (self.sums[0].to(f64) / n,
                    torch.sqrt(self.squares[0].to(f64) / n) * scale)
        total, scale = torch.stack(self.sums).to(f64), torch.stack(self.scales).to(f64)
        sizes = torch.full_like(total, float(self.sizes[1]))
        sizes[0] = float(self.sizes[0])
        count = sizes.sum()
        mean = total.sum() / count
        top = scale.amax()
        # each chunk's squares about its own mean, plus its mean's distance to the mean
        within = (torch.stack(self.squares).to(f64) * (scale / top).square()).sum()
        between = (sizes * ((total / sizes - mean) / top).square()).sum()
        return mean, torch.sqrt((within + between) / count) * top


def _fused_row(view: torch.Tensor, channels: bool, spread: bool,
               edges: tuple[float | None, float | None] | None, near_zero: float,
               units: bool = True, floor: float | None = None) -> list[float] | None:
    """MOMENTS, dead, [spread], [saturated] of a view that `fused.takes` as `_reduce` returns
    them (dead: NaN without `units`; with `floor`, units never above it, else units exactly 0),
    or None for a tensor holding NaN or ±inf (torch's reductions say how those propagate)."""
    numbers = fused.reduce(view, channels=channels, near_zero=near_zero, edges=edges,
                           spread=spread, units=units, dead_below=floor)
    if numbers is None:
        return None
    mean, std, lo, hi, small, saturated, gap, dead, magnitude = numbers
    count = view.numel()
    parts = [mean, std, lo, hi, small / count, magnitude, dead]
    if spread:
        parts.append(fused.relative_gap(lo, hi, gap))
    if edges is not None:
        parts.append(saturated / count)
    return parts


def _rows(x: torch.Tensor) -> torch.Tensor:
    """`x` with its leading dimensions (all but the units, the last) in the order of its memory
    where that makes it contiguous: the same rows in another order, so that a transposed
    output (nn.MultiheadAttention's batch-first one) is read in place rather than copied. No
    statistic depends on the order of the rows but for float rounding."""
    if x.dim() < 3 or x.is_contiguous() or x.stride(-1) != 1:
        return x
    order = sorted(range(x.dim() - 1), key=lambda d: -x.stride(d))
    rows = x.permute(*order, x.dim() - 1)
    return rows if rows.is_contiguous() else x


def _ratio(a: float | torch.Tensor, b: float | torch.Tensor) -> Row:
    """a / b as a row of one: a host float where both are (inf or NaN where b is 0, as a
    device division gives), else a device vector."""
    if isinstance(a, float) and isinstance(b, float):
        return [a / b if b else (math.nan if a == 0 else math.inf)]
    return (torch.as_tensor(a, dtype=torch.float64) / b).reshape(1)


def _host(rows: list[Row]) -> list[float]:
    """The rows' numbers in order: host floats as they are, every device vector among them
    fetched in one copy (`torch.cat(...).tolist()`)."""
    vectors = [row for row in rows if isinstance(row, torch.Tensor)]
    if not vectors:
        return [value for row in rows for value in row]
    device = vectors[0].device
    fetched = iter(torch.cat([v.to(device).reshape(-1) for v in vectors]).tolist())
    host: list[float] = []
    for row in rows:
        host.extend(islice(fetched, row.numel()) if isinstance(row, torch.Tensor) else row)
    return host


def _chunk_size(t: torch.Tensor) -> int:
    """CHUNK on the CPU; on a GPU the whole tensor (its passes are not cache-bound, and many
    small kernels would cost their launches)."""
    return CHUNK if t.device.type == "cpu" else max(t.numel(), 1)


def _chunks(t: torch.Tensor, step: int) -> list[torch.Tensor]:
    """`t` split along dim 0 into pieces of `step`, last piece first: a tensor just written
    by its module has its end, not its start, still in the caches, and reading backwards
    finds it there before fetching the rest from memory (forwards, the first reads from memory
    would evict it)."""
    return list(reversed(t.split(step)))


def _count(mask: torch.Tensor) -> torch.Tensor:
    """The number of ones in a 0/1 float mask: a float32 sum counts exactly below 2**24."""
    return mask.sum(dtype=torch.float64 if mask.numel() > 2**24 else None)


def first_tensor(value: Any) -> torch.Tensor | None:
    """The value itself if it is a tensor, else the first tensor of a tuple, list or dict."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    else:
        return None
    return next((v for v in items if isinstance(v, torch.Tensor)), None)


def _replace(value: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    """`value` with `old` replaced by `new` (a tensor, or in a tuple, list or dict); None when
    the container is of a kind that cannot be rebuilt here."""
    if value is old:
        return new
    if type(value) in (tuple, list):
        return type(value)(new if v is old else v for v in value)
    if type(value) is dict:
        return {k: new if v is old else v for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(new if v is old else v for v in value))
    if isinstance(value, Mapping):
        try:
            rebuilt = copy.copy(value)
            for k, v in value.items():
                if v is old:
                    rebuilt[k] = new
            return rebuilt
        except Exception:  # a read-only mapping: no replacement, no gradient for this output
            return None
    return None


def select_output(out: Any, output: int | str | None) -> torch.Tensor:
    """The model output's tensor that the loss is taken of."""
    if output is None:
        tensor = first_tensor(out)
        what = "the model's output"
    else:
        try:
            tensor = out[output]
        except (KeyError, IndexError, TypeError) as error:
            raise ModelError(f"output={output!r} does not select a tensor from the model's "
                             f"output ({type(out).__name__}): {error}") from error
        what = f"output[{output!r}]"
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ModelError(f"{what} holds no floating-point tensor to take a loss of "
                         f"(got {type(out).__name__}); select one with output=")
    return tensor


def _losses(out: torch.Tensor, targets: Any, loss: Callable | None, groups: int) -> torch.Tensor:
    """The loss of each group's output (K,), or of the one model's (1,)."""
    if groups:
        return torch.stack([_loss(part, targets, loss) for part in out.unbind(0)])
    return _loss(out, targets, loss).reshape(1)


def _loss(out: torch.Tensor, targets: Any, loss: Callable | None) -> torch.Tensor:
    if loss is not None:
        value = loss(out, targets)
    elif targets is not None:
        # logits (..., classes) against targets (...): a sequence model's tokens included
        logits = out.reshape(-1, out.shape[-1]) if out.dim() > 2 else out
        value = cross_entropy(logits, targets.reshape(-1) if out.dim() > 2 else targets)
    else:
        # no targets: the output's sum, so that every layer gets a gradient
        value = out.float().sum()
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ModelError("the loss must be a tensor with one element, got "
                         f"{type(value).__name__}"
                         + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                            else ""))
    return value.reshape(())


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [v for v in value.values() if isinstance(v, torch.Tensor)]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _shapes(value: Any) -> str:
    shapes = [tuple(t.shape) for t in _tensors(value)]
    return ", ".join(str(s) for s in shapes) if shapes else type(value).__name__
