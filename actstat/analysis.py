"""Analysis: the engine's records -> LayerStats rows with flags, and one verdict per scheme.

Every command measures through one engine (actstat/capture.py) and is analysed here, by one path
(`analyse_captured`): the built-in MLP, stacked or not, a user's model, `actstat.profile`, and
each recorded step of `actstat train` (`pair_rows`). These are the definitions they all use.

Definitions (each statistic is taken over all batch × units values of the tensor):

- `mean`, `std`: population mean and standard deviation (correction=0, as NumPy's `np.std`).
- `min`, `max`: the extreme values.
- `near_zero`: the fraction of values with |x| < thresholds.near_zero (absolute, both signs).
- `abs_mean`: the mean of |x|, a coordinate's typical size (the `l1` of the mup package's
  coordinate check): what `actstat coord-check` follows across widths (actstat/coordcheck.py).
  The engine reduces it for every tensor; the per-layer Report rows do not carry it.
- `dead` (post only): the fraction of units (a feature map's channels) whose output sits at
  their activation's floor, the value of its flat lower region, for every sample of the batch
  (and every position of a feature map): 0 for relu, relu6 and hardsigmoid, -0.5 for
  general_relu(subtract=0.5), min_val for hardtanh (actstat/activations.py `describe`). Such a
  unit's output is constant and its gradient exactly zero for the whole batch. None where the
  activation has no flat region (leaky_relu, tanh, sigmoid, gelu, silu, elu, selu, softplus,
  mish, identity): no unit of theirs can die. For any other module (a weight layer's own output,
  such as the head's logits; a norm; a block; an activation actstat does not know), a unit that
  is exactly 0 throughout. An upper clamp is saturation, not death. Compared in the tensor's
  dtype (a float32 relu - 0.5 unit at -0.5 is dead).
- `saturated` (post only): the fraction of values within (1 - thresholds.saturation_cut) of the
  ends of a bounded activation's range, in units of its half-range: |t| >= 0.97 for tanh by
  default; for general_relu with clamp_max, values at the clamp. None for unbounded activations.
- `grad.mean`, `grad.std`: of dL/d(pre), the gradient of the loss (mean cross-entropy of the head's
  logits against the batch's labels) with respect to the layer's pre-activation, over batch × units.
- `grad.weight_std`: population std of dL/dW over the weight's entries.
- `grad.grad_to_data`: std(dL/dW) / std(W), the size of an SGD step relative to the weights per
  unit learning rate (Karpathy's update:data ratio). None when std(W) is 0 (zeros, constant).

Flags (thresholds are config keys; see actstat/config.py for their defaults and sources):

- `nonfinite`: NaN or Inf among the layer's pre- or post-activations or its gradients. The run
  still completes.
- `symmetric`: every unit of the layer computes the same pre-activation for each sample: the
  largest range across units on one sample (max - min over units) is within thresholds.symmetric
  of the layer's largest |value| (all-zero layers included); needs 2+ units.
  Constant inits do this; such units get identical gradients and never differentiate.
- `vanishing`: post std < thresholds.vanishing × the input's std.
- `exploding`: post std > thresholds.exploding × the input's std.
- `dead`: dead fraction > thresholds.dead.
- `grad_vanishing`: grad std < thresholds.grad_vanishing × the last hidden layer's grad std.
- `grad_exploding`: grad std > thresholds.grad_exploding × the last hidden layer's grad std.
- `grad_zero`: dL/dW is exactly zero in every entry: this layer's weights cannot learn (zero init).
- `saturated`: saturated fraction > thresholds.saturated.

Of any model (below): the four signal flags (vanishing, exploding, grad_vanishing,
grad_exploding) are held to the segment a row lives in and the residual stream to its start,
not to the input across a norm ("Judgement"); `large_branch`, `entropy_collapse` and
`logit_growth` judge residual branches and attention; flags that an init's deliberate zeros
explain are `by_design`, not flags.

Layers of any model (`actstat.profile`, `--model`; the records of actstat/capture.py):

- Rows: a weight or normalisation layer's output is a row's `pre` and the output of the module
  that consumes it (its activation: the next module called with that tensor) the row's `post`;
  any other measured tensor (a weight layer with no module consuming it, such as a head or a
  layer followed by `F.relu`; a repeated block's output, the residual stream; a weight layer's
  input made by a functional op) is a row of its own, `post` only. Rows keep execution order.
- `fan_in`: of a weight layer, as torch.nn.init computes it (weight.size(1) × the kernel's
  size; for Hugging Face's Conv1D, whose weight is stored (in, out), size(0)); None for rows
  without a weight. `fan_out`: the units of `post`, a feature map's
  channels.
- `dead`: as defined above, of `post`'s units: by its module's floor where actstat knows the
  module, else exactly 0 for every sample and position.
- `saturated`: only where `post` comes from a known bounded activation module.
- `symmetric`: as above, on the output of the row's weight layer (2+ units).
- Judgement ("Judgement" in docs/statistics.md; `_roles`): a normalisation layer starts a new
  scale; a row is held (`vanishing`, `exploding`) to the std of the last norm or stream row
  before it, at the start to the input's std (token ids: the first row's); a norm's own row,
  and the rows of a segment that a norm closes, are not held to a scale (the norm rescales
  what comes in). The residual stream (each residual block's output: a repeated block with a
  branch added onto its input, actstat/stream.py) is held to its start (the first block's
  input) with room to grow: `exploding` above exploding × √k × the start's std at the k-th
  block, the growth of a pre-norm stack whose branches are as large as the stream. Rows inside
  a residual block are not held to a scale (a branch is a term added to the stream, small on
  purpose in many inits); they keep `nonfinite`, `symmetric`, `saturated`, `dead`, `grad_zero`
  and the attention flags. The head (a weight layer whose output nothing consumes: the logits)
  is not held to `vanishing`.
- Gradients: a stream row's against the last stream row's; a row outside every block against
  the last row of its gradient segment (rows cut at norms and at the stream; the head left out
  of it and not held to it); none inside a residual block. For the MLP: the last hidden layer.
- `large_branch`: a branch's rms over the rms of the stream it is added to (`branch_ratio`, at
  the add) above thresholds.branch.
- `entropy_collapse`: an attention head's mean normalised entropy (actstat/stream.py
  `attention_numbers`) below thresholds.attention_entropy; `logit_growth`: the largest
  attention logit above thresholds.attention_logit.
- By design (`ByDesign`): a structural init's deliberate zeros (fixup's zero branch last layers
  and head; rezero's α = 0) make some flags a property of the init, not a failure: those flags
  move from the row's `flags` to its `by_design` and the run gets a note saying so once. Flags
  that the zeros do not explain stay, and so do zeros that never leave 0 (`ByDesign.stuck`).
- The loss: cross-entropy of the output against the targets, the caller's `loss`, or the sum
  of the output when there are no targets (actstat/capture.py). From the CLI, data without
  labels (gaussian, tokens) has targets drawn with the seed: cross-entropy where the output is
  logits that fit them, else the sum (pipeline.drawn_target_loss).

Training (`actstat train`; the statistics through training are defined in actstat/watch.py):

- `nonfinite_loss`: the loss was NaN or Inf at this step; the run stopped there.
- `interrupted`: Ctrl-C at this step; what was recorded before is kept.
- `dead`: the first recorded step at which the layer's dead fraction exceeds thresholds.dead.
- `std_jump`: the first recorded step at which the layer's std is thresholds.std_jump times
  (or 1/std_jump of) its smallest (largest) positive std at an earlier recorded step `since`:
  a runaway or a collapse, sudden or gradual.
- `trained`: the loss fell by at least thresholds.trained: `loss_drop` = 1 − (the median loss
  of the last five recorded steps, or of all but step 0 where fewer) / (the loss at step 0),
  and, for a cross-entropy, that median ended below chance level (`chance_loss` = ln of the
  number of classes: what logits that know nothing score, 2.303 for ten classes): a run that
  starts above chance (a poor init's logits, confidently wrong) and falls to it has only
  unlearned its init. A run stopped by a non-finite loss did not train. Fewer than two
  recorded steps: not judged.

The verdict of a scheme is the first of `FLAGS` (actstat/records.py) that any of its layers carries (the most
fundamental cause first: symmetric weights explain vanishing, not the other way round), else
`healthy`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from actstat.config import Thresholds
from actstat.records import (
    EVENT_KINDS,
    FLAGS,
    HEALTHY,
    ByDesign,
    CapturedLayer,
    Event,
    GradStats,
    LayerStats,
    PostStats,
    TensorStats,
    Trajectory,
    finite_or_none,
)

# the statistics every tensor has (actstat/capture.py reduces them in this order)
MOMENTS = ("mean", "std", "min", "max", "near_zero")


def verdict(layers: tuple[LayerStats, ...]) -> str:
    present = {flag for layer in layers for flag in layer.flags}
    return next((flag for flag in FLAGS if flag in present), HEALTHY)


def first_flagged(layers: tuple[LayerStats, ...], flag: str) -> LayerStats | None:
    return next((layer for layer in layers if flag in layer.flags), None)


@dataclass(frozen=True)
class Summary:
    """One scheme in a line, derived from its Run alone (so a saved report can be re-summarised).

    - `first_std`, `last_std`, `gain`, `worst_dead`, `worst_saturated`: over the signal rows
      (`signal_rows`: the head, the logits, is not the signal). `gain`: the geometric mean of
      the layer-to-layer ratios of post std, (std_last / std_first) ** (1 / (depth - 1)): < 1
      the signal shrinks by that factor per layer, > 1 it grows. None with one layer, or when a
      std is 0 or not finite.
    - `first_flag`: (layer index, flag) of the first flagged layer, its first flag in FLAGS order.
    - `worst_dead`, `worst_saturated`: the largest fraction over the layers (None: not
      applicable); a layer dead by design (a zero layer of fixup's) is not counted.
    - `grad_ratio`: std of dL/d(pre) at layer 1 over the last hidden layer's (None: no gradients);
      of any model, over its gradient reference's (`grad_reference`).
    """

    verdict: str
    first_std: float | None
    last_std: float | None
    gain: float | None
    first_flag: tuple[int, str] | None
    worst_dead: float | None
    worst_saturated: float | None
    grad_ratio: float | None


def trend_rows(layers: Sequence[LayerStats]) -> Sequence[LayerStats]:
    """The rows a run's summary follows from first to last: the residual stream (its start and
    each residual block's output) where it has two rows or more, else the signal rows."""
    stream = [layer for layer in layers if layer.stream is not None]
    return stream if len(stream) > 1 else signal_rows(layers)


def summarise(layers: tuple[LayerStats, ...], verdict_name: str) -> Summary:
    signal = signal_rows(layers)
    trend = trend_rows(layers)
    first, last = trend[0].post.std, trend[-1].post.std
    gain = None
    if len(trend) > 1 and first and last:
        gain = (last / first) ** (1 / (len(trend) - 1))
    flagged = next((layer for layer in layers if layer.flags), None)
    deads = [layer.post.dead for layer in signal
             if layer.post.dead is not None and "dead" not in layer.by_design]
    saturations = [layer.post.saturated for layer in signal if layer.post.saturated is not None]
    g_first, g_last = ((trend[0].grad, trend[-1].grad) if trend[0].stream is not None
                       else (layers[0].grad, grad_reference(layers).grad))
    ratio = None
    if g_first is not None and g_last is not None and g_first.std is not None and g_last.std:
        ratio = g_first.std / g_last.std
    return Summary(
        verdict=verdict_name,
        first_std=first,
        last_std=last,
        gain=finite_or_none(gain),
        first_flag=(flagged.index, flagged.flags[0]) if flagged else None,
        worst_dead=max(deads) if deads else None,
        worst_saturated=max(saturations) if saturations else None,
        grad_ratio=finite_or_none(ratio),
    )


def analyse_captured(records: Sequence[CapturedLayer], *, input_std: float | None,
                     thresholds: Thresholds,
                     by_design: ByDesign | None = None) -> tuple[LayerStats, ...]:
    """One LayerStats per row of a capture (see "Layers of any model" above), in order; the
    flags that `by_design` explains in each row's `by_design` instead of its `flags`."""
    rows = pair_rows(records)
    if not rows:
        return ()
    head = rows[-1][0] is None and rows[-1][1].kind == "weight" and len(rows) > 1
    roles = _roles(rows, input_std, head)
    return tuple(_captured_row(i, pre, post, role, thresholds, by_design)
                 for i, ((pre, post), role) in enumerate(zip(rows, roles), start=1))


@dataclass(frozen=True)
class _Role:
    """Where a row sits, for its judgement: the std its signal flags hold it to (None: not
    judged), the gradient std its gradient flags hold it to (None: not judged), whether it is
    the head, its place on the residual stream, and its stream position (1 for the first
    block's output) for the stream's allowed growth."""

    scale: float | None
    grad_scale: float | None
    head: bool = False
    stream: str | None = None
    position: int = 0
    scale_of: str | None = None  # the row whose std `scale` is ("input": the input's)
    grad_of: str | None = None  # the row whose gradient std `grad_scale` is


def _roles(rows: Sequence[tuple[CapturedLayer | None, CapturedLayer]], input_std: float | None,
           head: bool) -> list[_Role]:
    """Each row's references ("Judgement" in the module docstring).

    Scale: a stream row's is the stream's start; a row inside a residual block has none; any
    other row's is its segment's, the std of the last norm or stream row before it (at the
    start: the input's, or for token ids the first row's). Gradient: a stream row's is the
    last stream row's; a row inside a residual block has none; any other row's is the last
    row of its gradient segment (rows between norms and the stream, the head left out)."""
    firsts = [pre or post for pre, post in rows]
    blocks = tuple(post.block + end for _, post in rows if post.block for end in ".:")
    inside = [first.name.startswith(blocks) and first.stream is None
              and post.stream is None for first, (_, post) in zip(firsts, rows)]
    streams = [post.stream or first.stream for first, (_, post) in zip(firsts, rows)]
    normed = [first.kind == "norm" for first in firsts]

    def std(k: int) -> float | None:
        pre, post = rows[k]
        tensor = pre if pre is not None and normed[k] else post
        value = tensor.stats["std"]
        return value if math.isfinite(value) else None

    def grad(k: int) -> float | None:
        g = (firsts[k].grad or rows[k][1].grad) or {}
        value = g.get("std")
        return value if value is not None and math.isfinite(value) else None

    stream_rows = [k for k, role in enumerate(streams) if role is not None]
    start = next((k for k in stream_rows if streams[k] == "start"), None)
    start_std = std(start) if start is not None else None
    last_stream_grad = grad(stream_rows[-1]) if stream_rows else None
    start_name = firsts[start].name if start is not None else None
    if start is None and stream_rows and input_std:
        start_std, start_name = input_std, "input"  # the first block takes the data itself
    last_stream_name = firsts[stream_rows[-1]].name if stream_rows else None
    # gradient segments: runs of rows outside blocks and off the stream, cut at norms
    segment_of: dict[int, int] = {}
    segments: list[list[int]] = []
    for k in range(len(rows)):
        if inside[k] or streams[k] is not None:
            if segments and segments[-1]:
                segments.append([])
            continue
        if normed[k] or not segments:
            segments.append([])
        segments[-1].append(k)
        segment_of[k] = len(segments) - 1
    last = len(rows) - 1
    # a segment that a norm closes: the norm sets the scale of what follows it, whatever
    # comes in (scale-invariant), so its rows are judged by their gradients only
    closed = {j for j, members in enumerate(segments)
              if members and members[-1] + 1 <= last and normed[members[-1] + 1]}
    roles: list[_Role] = []
    scale = input_std if input_std else std(0)
    scale_of = "input" if input_std else firsts[0].name
    position = 0
    for k in range(len(rows)):
        is_head = head and k == last
        if streams[k] is not None:
            position += streams[k] == "block"
            # the stream's start is judged as any row is (not at all when it is a norm's
            # output), each block's output against the start
            own = start_std if streams[k] == "block" else None if normed[k] else scale
            roles.append(_Role(own, last_stream_grad, stream=streams[k], position=position,
                               scale_of=start_name if streams[k] == "block" else scale_of,
                               grad_of=last_stream_name))
            scale, scale_of = std(k), firsts[k].name
            continue
        if inside[k]:
            roles.append(_Role(None, None))
            continue
        members = [j for j in segments[segment_of[k]] if not (head and j == last)]
        reference = grad(members[-1]) if members else None
        grad_of = firsts[members[-1]].name if members else None
        judged = not normed[k] and segment_of[k] not in closed
        roles.append(_Role(scale if judged else None, None if is_head else reference,
                           head=is_head, scale_of=scale_of if judged else None,
                           grad_of=None if is_head else grad_of))
        if normed[k]:
            scale, scale_of = std(k), firsts[k].name
    return roles


def design_notes(layers: Sequence[LayerStats], design: ByDesign | None) -> tuple[str, ...]:
    """What a run's deliberate zeros did, said once: what starts at 0 and who set it, how many
    layers' gradients are 0 at step 0 because of it, and which zeros can never leave 0 (those
    stay flagged). Nothing when no row showed a flag that they explain."""
    if design is None or not any(layer.by_design for layer in layers):
        return ()
    names = [layer.name for layer in layers]
    zeros = [n for n in names if n in design.zero_weights or n in design.stuck]
    what = [f"{_listed(zeros)} start at 0"] if zeros else []
    if design.gates:
        what.append(f"α starts at 0 in {_listed(sorted(design.gates))} (each block starts as "
                    "the identity)")
    quiet = sum(bool({"grad_zero", "grad_vanishing"} & set(layer.by_design))
                for layer in layers if layer.name in design.quiet)
    note = f"zero by design ({design.source}): {'; '.join(what)}"
    if quiet:
        gradients = ("1 layer's gradient is", "it flows") if quiet == 1 else (
            f"{quiet} layers' gradients are", "they flow")
        note += (f", so {gradients[0]} exactly 0 at step 0 ({gradients[1]} once training moves "
                 "those zeros)")
    notes = [note]
    stuck = [n for n in names if n in design.stuck]
    if stuck:
        notes.append(f"but {design.activation or 'the activation'} is flat at 0: "
                     f"{_listed(stuck)} get no gradient, never leave 0 and stay dead, and the "
                     "layers before them in their branch never learn (flagged)")
    return tuple(notes)


def _listed(names: Sequence[str]) -> str:
    """Module names with block numbers folded (`blocks.*.branch.fc2`), in first-seen order,
    joined as `a, b and c`."""
    folded = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name) for name in names))
    return " and ".join(filter(None, [", ".join(folded[:-1]), folded[-1]]))


def head_row(layers: Sequence[LayerStats]) -> LayerStats | None:
    """The head: the last row when it is a weight layer whose output nothing consumes (the
    logits; the MLP's `head`), and not the only row; None where the last row is not one."""
    last = layers[-1] if len(layers) > 1 else None
    return last if last is not None and last.kind == "weight" and last.pre is None else None


def signal_rows(layers: Sequence[LayerStats]) -> Sequence[LayerStats]:
    """The rows that carry the signal: all but the head (the MLP's hidden layers) and the
    residual branches measured at their add (`α · branch`: a term of the stream, not a layer)."""
    rows = layers[:-1] if head_row(layers) is not None else layers
    if not any(layer.kind == "branch" for layer in rows):
        return rows
    return [layer for layer in rows if layer.kind != "branch"] or rows


def grad_reference(layers: Sequence[LayerStats]) -> LayerStats:
    """The row whose gradient std the others' are held to: the last, or the one before it when
    the last is the head (the MLP's reference is its last hidden layer)."""
    return signal_rows(layers)[-1]


def pair_rows(records: Sequence[CapturedLayer]) -> list[tuple[CapturedLayer | None,
                                                              CapturedLayer]]:
    """(pre, post) per row: an activation record joins the weight or norm record it consumes."""
    rows: list[list[CapturedLayer | None]] = []
    open_rows: dict[str, list[CapturedLayer | None]] = {}
    for record in records:
        if record.kind == "activation" and record.consumes in open_rows:
            row = open_rows.pop(record.consumes)
            row[0], row[1] = row[1], record
            continue
        row = [None, record]
        rows.append(row)
        if record.kind in ("weight", "norm"):
            open_rows[record.name] = row
    return [(pre, post) for pre, post in rows if post is not None]


def torch_fans(weight_shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them: size(1) and size(0), each times the
    kernel's size (the product of the dimensions after the second)."""
    receptive = math.prod(weight_shape[2:])
    return weight_shape[1] * receptive, weight_shape[0] * receptive


def _captured_row(index: int, pre_record: CapturedLayer | None, post_record: CapturedLayer,
                  role: _Role, t: Thresholds, design: ByDesign | None = None) -> LayerStats:
    first = pre_record or post_record
    raw_post = post_record.stats
    pre = None
    if pre_record is not None:
        pre = TensorStats(**{k: finite_or_none(pre_record.stats[k]) for k in MOMENTS})
    bounds_finite = all(math.isfinite(r.stats[k]) for r in (pre_record, post_record)
                        if r is not None for k in ("min", "max"))
    histogram = None
    if post_record.histogram is not None and bounds_finite:
        histogram = tuple(round(c) for c in post_record.histogram)
    post = PostStats(**{k: finite_or_none(raw_post[k]) for k in MOMENTS},
                     dead=finite_or_none(raw_post["dead"]),
                     saturated=finite_or_none(raw_post.get("saturated")),
                     histogram=histogram)
    units = post_record.shape[post_record.unit_dim] if post_record.shape else 1
    weight = first if first.kind == "weight" and first.weight_shape is not None else None
    fan_in = (torch_fans(weight.weight_shape)[0]
              if weight is not None and len(weight.weight_shape) >= 2 else None)
    grad, grad_flags = _captured_grad(first.grad or post_record.grad, role.grad_scale, t)
    std = raw_post["std"]
    spread = weight.stats.get("spread") if weight is not None else None
    scale = role.scale if bounds_finite else None
    # a pre-norm stack's stream may grow as the square root of the branches added to it
    allowed = math.sqrt(role.position) if role.stream == "block" else 1.0
    branch = next((r.branch for r in (post_record, pre_record)
                   if r is not None and r.branch is not None), None)
    attention = next((r.attention for r in (post_record, pre_record)
                      if r is not None and r.attention is not None), None)
    entropy = None if attention is None else tuple(finite_or_none(e) for e in attention[:-1])
    top = None if attention is None else finite_or_none(attention[-1])
    flags = {
        **grad_flags,
        "nonfinite": not bounds_finite or grad_flags.get("nonfinite", False),
        "symmetric": bounds_finite and units > 1 and spread is not None and spread <= t.symmetric,
        "exploding": scale is not None and std > t.exploding * allowed * scale,
        # the head's output is the logits: small ones are a calm start (fixup and μP start it
        # at 0), and the loss's gradient at them, softmax - labels, is not small
        "vanishing": scale is not None and not role.head and std < t.vanishing * scale,
        "large_branch": branch is not None and math.isfinite(branch) and branch > t.branch,
        "entropy_collapse": entropy is not None and any(
            e is not None and e < t.attention_entropy for e in entropy),
        "logit_growth": top is not None and top > t.attention_logit,
        "saturated": post.saturated is not None and post.saturated > t.saturated,
        "dead": post.dead is not None and post.dead > t.dead,
    }
    deliberate = design.flags(first.name) if design is not None else frozenset()
    module = first.module_type if pre_record is None else (
        f"{pre_record.module_type} → {post_record.module_type}")
    return LayerStats(index, fan_in, max(units, 1), pre, post, grad,
                      tuple(f for f in FLAGS if flags.get(f) and f not in deliberate),
                      name=first.name, kind=first.kind, module=module,
                      by_design=tuple(f for f in FLAGS if flags.get(f) and f in deliberate),
                      stream=role.stream, branch_ratio=finite_or_none(branch),
                      attention_entropy=entropy, max_logit=top,
                      scale_of=role.scale_of, scale_allowed=allowed if role.stream == "block"
                      else None, grad_of=role.grad_of)


def _captured_grad(g: dict[str, float | None] | None, last_std: float | None,
                   t: Thresholds) -> tuple[GradStats | None, dict[str, bool]]:
    if g is None:
        return None, {}
    values = [g[k] for k in ("mean", "std", "weight_std", "weight_min", "weight_max")
              if g.get(k) is not None]
    finite = all(math.isfinite(v) for v in values)
    stats = GradStats(finite_or_none(g["mean"]), finite_or_none(g["std"]),
                      finite_or_none(g.get("weight_std")), finite_or_none(g.get("grad_to_data")))
    std = g["std"]
    relative = (std / last_std if finite and std is not None and last_std
                and math.isfinite(last_std) else None)
    trainable = g.get("weight_min") is not None
    return stats, {
        "nonfinite": not finite,
        "grad_vanishing": relative is not None and relative < t.grad_vanishing,
        "grad_exploding": relative is not None and relative > t.grad_exploding,
        "grad_zero": finite and trainable and g["weight_min"] == 0 == g["weight_max"],
    }


# -- training ----------------------------------------------------------------------------------

TAIL = 5  # recorded steps whose median loss is the final loss


def analyse_trajectory(trajectory: Trajectory, thresholds: Thresholds) -> Trajectory:
    """The trajectory with its events (in step order) and whether it trained (definitions:
    the module docstring, "Training")."""
    t = trajectory
    events: list[Event] = []
    if t.stopped is not None and t.stopped_at is not None:
        kind = "nonfinite_loss" if t.stopped == "nonfinite" else "interrupted"
        events.append(Event(kind, t.stopped_at, value=t.loss[-1] if kind == "nonfinite_loss"
                            and t.loss else None))
    for layer in t.layers:
        if layer.dead is not None:
            dead = next(((step, d) for step, d in zip(t.steps, layer.dead)
                         if d is not None and d > thresholds.dead), None)
            if dead is not None:
                events.append(Event("dead", dead[0], layer.name, value=dead[1]))
        jump = _std_jump(t.steps, layer.std, thresholds.std_jump)
        if jump is not None:
            events.append(Event("std_jump", jump[0], layer.name, since=jump[1], value=jump[2]))
    order = {kind: k for k, kind in enumerate(EVENT_KINDS)}
    events.sort(key=lambda e: (e.step, order[e.kind]))
    drop = _loss_drop(t.loss)
    final = _final_loss(t.loss)
    trained = None if len(t.steps) < 2 else (
        t.stopped != "nonfinite" and drop is not None and drop >= thresholds.trained
        and (t.chance_loss is None or (final is not None and final < t.chance_loss)))
    return replace(t, events=tuple(events), trained=trained, loss_drop=drop)


def _std_jump(steps: Sequence[int], stds: Sequence[float | None],
              ratio: float) -> tuple[int, int, float] | None:
    """(step, since, std ratio) of the first std `ratio` times the smallest positive one before
    it, or 1/`ratio` of the largest; None if there is none."""
    low = high = None  # (std, step) of the smallest and largest positive std so far
    for step, std in zip(steps, stds):
        if std is None or std <= 0:
            continue
        if low is not None and std / low[0] >= ratio:
            return step, low[1], std / low[0]
        if high is not None and std / high[0] <= 1 / ratio:
            return step, high[1], std / high[0]
        low = (std, step) if low is None or std < low[0] else low
        high = (std, step) if high is None or std > high[0] else high
    return None


def _loss_drop(losses: Sequence[float | None]) -> float | None:
    if len(losses) < 2 or losses[0] is None or losses[0] <= 0:
        return None
    final = _final_loss(losses)
    return None if final is None else 1 - final / losses[0]


def _final_loss(losses: Sequence[float | None]) -> float | None:
    """Where the loss ended: the median of the last TAIL recorded after step 0."""
    tail = [loss for loss in losses[1:][-TAIL:] if loss is not None]
    return statistics.median(tail) if tail else None
