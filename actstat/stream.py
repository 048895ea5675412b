"""Stream: what a module hook cannot see inside a residual block, seen through torch's function
mode: the adds that put a branch onto the residual stream, and the attention probabilities of
a softmax or of `F.scaled_dot_product_attention`.

actstat/capture.py's Probe enters `Watch` for a pass over a model with repeated blocks and tells
it where the stream is (a block's input, and what the block makes of it); `Watch` calls back:

- `on_add(branch, stream, block)` before an add whose one operand is the stream and whose other
  is a tensor of the same shape (`x + f(x)`, `f(x) + x`, `out += x`, `torch.add`): the branch.
  The add's result (for an in-place add, the same tensor) is the stream from then on.
- `on_attention(numbers)` for a softmax over the last dimension taken inside an attention
  module (eager attention), or for a scaled-dot-product attention call, whose probabilities it
  computes from the query, the key, the mask and the scale (SDPA keeps them to itself):
  `attention_numbers`, taken a piece of queries at a time (PIECE_BYTES). An
  `F.multi_head_attention_forward` call (nn.MultiheadAttention's) runs its projections and
  attention inside it, unseen by a function mode: a dispatcher mode watches it while it runs
  (`_InsideAttention`) and reads the attention operation it ends in, or its softmax.

Nothing here hooks a module (that is capture.py's alone); nothing here copies to the host: the
arithmetic (`rms`, `attention_numbers`) stays on the tensors' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from actstat import fused

# the ways Python code adds two tensors
ADDS = frozenset({torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
                  torch.Tensor.__radd__, torch.Tensor.__iadd__})
IN_PLACE = frozenset({torch.Tensor.add_, torch.Tensor.__iadd__})
SOFTMAXES = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax})
SDPA = F.scaled_dot_product_attention
MHA = F.multi_head_attention_forward


class Watch(TorchFunctionMode):
    """The function mode of one pass. `is_stream(t)`: whether `t` is the current block's stream;
    `mark(t)`: `t` is the stream from now on; `in_attention()`: whether the innermost module
    call is an attention module's; `active()`: whether to look at all (inside a block, not
    paused); `on_attention(numbers)`: an attention call's `attention_numbers`."""

    def __init__(self, *, active: Callable[[], bool], is_stream: Callable[[torch.Tensor], bool],
                 mark: Callable[[torch.Tensor], None],
                 on_add: Callable[[torch.Tensor, torch.Tensor], None],
                 in_attention: Callable[[], bool],
                 on_attention: Callable[[torch.Tensor], None]):
        super().__init__()
        self.active = active
        self.is_stream = is_stream
        self.mark = mark
        self.on_add = on_add
        self.in_attention = in_attention
        self.on_attention = on_attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ADDS and self.active():
            return self._add(func, args, kwargs)
        if func is MHA and self.active():
            # its inner calls run unseen by this mode: they are looked at by the dispatcher
            inside = _InsideAttention(_heads(args, kwargs))
            with inside:
                out = func(*args, **kwargs)
            if inside.numbers is not None:
                self.on_attention(inside.numbers)
            else:  # no operation of them known: the logits from its projections again
                self._attention(mha_pieces(*args, **kwargs))
            return out
        if func is SDPA and self.active():
            out = func(*args, **kwargs)
            self._attention(sdpa_pieces(*args, **kwargs))
            return out
        out = func(*args, **kwargs)
        if func in SOFTMAXES and self.active() and self.in_attention() and _last_dim(args, kwargs):
            logits = args[0]
            if isinstance(logits, torch.Tensor) and logits.dim() >= 3:
                self._attention(softmax_pieces(logits))
        return out

    def _attention(self, pieces: Iterator[torch.Tensor]) -> None:
        with torch.no_grad():
            numbers = attention_numbers(pieces)
        if numbers is not None:
            self.on_attention(numbers)

    def _add(self, func, args, kwargs):
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        tensors = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        stream = branch = None
        if tensors and a.shape == b.shape and a.is_floating_point():
            if self.is_stream(a) and not self.is_stream(b):
                stream, branch = a, b
            elif self.is_stream(b) and not self.is_stream(a):
                stream, branch = b, a
        if stream is not None and kwargs.get("alpha", 1) == 1:
            with torch.no_grad():
                self.on_add(branch, stream)  # (as they are: the Probe knows them by identity)
        out = func(*args, **kwargs)
        if stream is not None and isinstance(out, torch.Tensor):
            self.mark(out)
        return out


# torch's own way to step out of the innermost function mode for a while (private: where a
# torch lacks it, the hooks' work is seen by the mode, and ignored by it, as before)
_pop_mode = getattr(torch.overrides, "_pop_mode_temporarily", None)
_current_mode = getattr(torch.overrides, "_get_current_function_mode", None)


def unwatched(watch: Watch | None) -> AbstractContextManager:
    """A context in which `watch`, while it is the innermost function mode, sees nothing: the
    capture's hooks run their own tensor work (a reshape, a shape, a reduction) in it. Every
    torch call under a function mode goes through its Python `__torch_function__` (tensor
    attributes included): the hooks of a depth-50 residual model made 7,000 such calls a pass,
    more than the model itself."""
    if watch is None or _pop_mode is None or _current_mode is None or _current_mode() is not watch:
        return _AS_IT_IS
    return _pop_mode()


_AS_IT_IS = nullcontext()  # (reusable: entering it does nothing)


def _last_dim(args: tuple, kwargs: dict) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    logits = args[0] if args else None
    return (isinstance(logits, torch.Tensor) and isinstance(dim, int)
            and dim in (-1, logits.dim() - 1))


# -- attention, a piece at a time ----------------------------------------------------------------
#
# An attention's logits are (batch, heads, queries, keys): GPT-2 small's, 4 x 12 x 256 x 256
# floats (12.6 MB) per layer, a long context's far more. Every number taken of them (the softmax,
# each query's entropy and allowed keys, the largest logit) is per query, so they are taken a
# piece of queries at a time, each piece at most PIECE_BYTES of float32 logits: the piece's
# passes stay in the processor's cache, and a pass holds one piece at a time beside the model's
# own tensors, never a second copy of a layer's attention.

PIECE_BYTES = 4 << 20

def _spans(batch: int, queries: int, per_query: int) -> Iterator[tuple[slice, slice]]:
    """(batch slice, query slice) pieces of at most PIECE_BYTES, `per_query` bytes a query: whole
    samples where one fits, else a sample's queries in runs."""
    per_sample = queries * per_query
    if per_sample <= PIECE_BYTES:
        step = max(1, PIECE_BYTES // per_sample)
        for b in range(0, batch, step):
            yield slice(b, b + step), slice(None)
        return
    step = max(1, PIECE_BYTES // per_query)
    for b in range(batch):
        for q in range(0, queries, step):
            yield slice(b, b + 1), slice(q, q + step)


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def _part(mask: torch.Tensor, rows: slice, queries: slice) -> torch.Tensor:
    """A (1 or batch, 1 or heads, 1 or queries, keys) mask's part for a piece: sliced along
    the dims it has in full, broadcast along the others."""
    if mask.shape[0] > 1:
        mask = mask[rows]
    if mask.shape[-2] > 1:
        mask = mask[..., queries, :]
    return mask


def _logit_pieces(q: torch.Tensor, k: torch.Tensor, scale: float,
                  masks: list[torch.Tensor], causal: bool) -> Iterator[torch.Tensor]:
    """The logits q kᵀ · scale, masked, a piece at a time. q: (batch, heads, queries, dim);
    k: (batch, heads or a divisor of them (grouped-query attention), keys, dim); masks: 4-D,
    broadcastable to the logits, boolean (True: the key takes part) or added to them; `causal`:
    the keys after each query are masked (top-left aligned, as SDPA's is_causal)."""
    batch, heads, queries, _ = q.shape
    keys = k.shape[-2]
    repeat = heads // k.shape[1]
    for rows, span in _spans(batch, queries, heads * keys * 4):
        qp = q[rows, :, span].float() * scale  # (the scale on the smaller operand)
        kp = k[rows].float()
        if repeat > 1:
            kp = kp.repeat_interleave(repeat, dim=1)
        logits = qp @ kp.transpose(-2, -1)
        if causal:
            first = span.start or 0
            position = torch.arange(first, first + logits.shape[-2], device=logits.device)
            future = torch.arange(keys, device=logits.device) > position[:, None]
            logits.masked_fill_(future, -math.inf)
        for mask in masks:
            part = _part(mask, rows, span)
            if part.dtype == torch.bool:
                logits.masked_fill_(~part, -math.inf)
            else:
                logits += part.float()
        yield logits


def sdpa_pieces(query: torch.Tensor, key: torch.Tensor, value: Any = None,
                attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False, **_: Any) -> Iterator[torch.Tensor]:
    """The attention logits that `F.scaled_dot_product_attention(query, key, ...)` softmaxes, a
    piece at a time: q kᵀ · scale plus the mask (a boolean mask's False and the causal mask's
    future: -inf), key heads repeated for grouped-query attention. Nothing for what it does not
    take (nested tensors, other than 3 or 4 dimensions: a 3-D query is (heads, queries, dim))."""
    if (query.dim() not in (3, 4) or key.dim() != query.dim()
            or getattr(query, "is_nested", False)):
        return iter(())
    q, k = _as_4d(query.detach()), _as_4d(key.detach())
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        return iter(())
    masks = []
    if attn_mask is not None:
        if attn_mask.dim() > 4:
            return iter(())
        masks.append(_as_4d(attn_mask.detach()))
    factor = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    return _logit_pieces(q, k, factor, masks, is_causal)


def mha_pieces(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               embed_dim_to_check: int, num_heads: int, in_proj_weight: torch.Tensor | None,
               in_proj_bias: torch.Tensor | None, bias_k: torch.Tensor | None = None,
               bias_v: torch.Tensor | None = None, add_zero_attn: bool = False,
               *args: Any, key_padding_mask: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None, use_separate_proj_weight: bool = False,
               q_proj_weight: torch.Tensor | None = None,
               k_proj_weight: torch.Tensor | None = None, static_k: torch.Tensor | None = None,
               is_causal: bool = False, **_: Any) -> Iterator[torch.Tensor]:
    """The attention logits of `F.multi_head_attention_forward(query, key, ...)` (its inputs
    (L, E) or (L, N, E), as nn.MultiheadAttention passes them), a piece at a time: the
    projected query and key, split into heads, q kᵀ / √head_dim, plus the masks (a boolean
    one's True: masked out). Nothing for what it does not take: extra key biases, a zero
    attention row, static keys."""
    if bias_k is not None or add_zero_attn or static_k is not None or query.dim() not in (2, 3):
        return iter(())
    q_in, k_in = query.detach().float(), key.detach().float()
    if q_in.dim() == 2:
        q_in, k_in = q_in.unsqueeze(1), k_in.unsqueeze(1)
    length, batch, embed = q_in.shape
    if use_separate_proj_weight:
        if q_proj_weight is None or k_proj_weight is None:
            return iter(())
        w_q, w_k = q_proj_weight.detach().float(), k_proj_weight.detach().float()
    elif in_proj_weight is not None:
        w_q, w_k, _ = in_proj_weight.detach().float().chunk(3)
    else:
        return iter(())
    b_q = b_k = None
    if in_proj_bias is not None:
        b_q, b_k, _ = in_proj_bias.detach().float().chunk(3)
    head = embed // num_heads
    # (L, N, E) -> (N, heads, L, head)
    q = F.linear(q_in, w_q, b_q).reshape(length, batch, num_heads, head).permute(1, 2, 0, 3)
    k = F.linear(k_in, w_k, b_k).reshape(k_in.shape[0], batch, num_heads, head).permute(1, 2, 0, 3)
    masks = []
    if attn_mask is not None:
        mask = attn_mask.detach()
        mask = mask.reshape(batch, num_heads, length, -1) if mask.dim() == 3 else _as_4d(mask)
        masks.append(~mask if mask.dtype == torch.bool else mask)
    if key_padding_mask is not None:
        pad = key_padding_mask.detach().reshape(batch, 1, 1, -1)
        masks.append(~pad if pad.dtype == torch.bool else pad)
    return _logit_pieces(q, k, 1 / math.sqrt(head), masks, is_causal and attn_mask is None)


# -- inside nn.MultiheadAttention ------------------------------------------------------------
#
# `F.multi_head_attention_forward` is one call to the function mode: its projections, its
# attention and its softmax run inside it, unseen. Computing its query and key again from its
# projections costs about what the call's own in-projection does (on the test zoo's transformer,
# as much as the rest of the pass's statistics together), so while it runs a dispatcher mode
# watches its operations: the attention operation it ends in (its query and key, projected and
# split into heads, and the mask it built) or, with need_weights, its softmax (the logits
# themselves). Where neither comes (an operation of a torch not known here), `mha_pieces`
# computes the logits again.


def _flash(query, key, value=None, dropout_p=0.0, is_causal=False, *_, attn_mask=None,
           scale=None, **__):
    return sdpa_pieces(query, key, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def _math(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, *_,
          scale=None, enable_gqa=False, **__):
    return sdpa_pieces(query, key, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                       enable_gqa=enable_gqa)


def _with_bias(query, key, value=None, attn_bias=None, compute_log_sumexp=False, dropout_p=0.0,
               is_causal=False, *_, scale=None, **__):
    return sdpa_pieces(query, key, attn_mask=attn_bias, is_causal=is_causal, scale=scale)


# aten's scaled-dot-product attention operations (one per backend), as SDPA's arguments
_ATEN_ATTENTION = {"_scaled_dot_product_flash_attention_for_cpu": _flash,
                   "_scaled_dot_product_flash_attention": _flash,
                   "_scaled_dot_product_attention_math": _math,
                   "_scaled_dot_product_attention_math_for_mps": _math,
                   "_scaled_dot_product_efficient_attention": _with_bias,
                   "_scaled_dot_product_cudnn_attention": _with_bias}
ATTENTION_OPERATIONS = {getattr(torch.ops.aten, name): read
                        for name, read in _ATEN_ATTENTION.items() if hasattr(torch.ops.aten, name)}
SOFTMAX_OPERATIONS = {getattr(torch.ops.aten, name) for name in ("_softmax", "_safe_softmax")
                      if hasattr(torch.ops.aten, name)}


def _heads(args: tuple, kwargs: dict) -> int:
    heads = args[4] if len(args) > 4 else kwargs.get("num_heads", 1)
    return heads if isinstance(heads, int) and heads > 0 else 1


class _InsideAttention(TorchDispatchMode):
    """The dispatcher's view of one `F.multi_head_attention_forward` call: `numbers`, the
    `attention_numbers` of the first attention operation or softmax over keys it runs (None
    where it runs neither)."""

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads
        self.numbers: torch.Tensor | None = None
        self.done = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.done:
            return out
        packet = func.overloadpacket
        read = ATTENTION_OPERATIONS.get(packet)
        logits = args[0] if args else None  # a softmax's: (batch × heads, queries, keys)
        softmax = (read is None and packet in SOFTMAX_OPERATIONS and _last_dim(args, kwargs)
                   and logits.dim() == 3 and logits.shape[0] % self.heads == 0)
        if read is not None or softmax:
            self.done = True
            try:
                with torch.no_grad():
                    self.numbers = attention_numbers(
                        read(*args, **kwargs) if read is not None
                        else softmax_pieces(logits.reshape(-1, self.heads, *logits.shape[1:])))
            except (TypeError, ValueError, RuntimeError):
                # arguments not as this torch's schema has them (another version's): the
                # call's projections serve instead (numbers None)
                self.numbers = None
        return out


def softmax_pieces(logits: torch.Tensor) -> Iterator[torch.Tensor]:
    """The logits (..., heads, queries, keys) of a softmax taken inside an attention module, a
    piece at a time (all but the last three dimensions are the batch; 3-D: (heads, queries,
    keys)). Its probabilities are the softmax of these: they are taken again here, a piece at a
    time, as they are for SDPA, rather than read from the module's own output."""
    lg = logits.detach()
    lg = lg.reshape(-1, *lg.shape[-3:])
    for rows, span in _spans(lg.shape[0], lg.shape[2], lg.shape[1] * lg.shape[3] * 4):
        yield lg[rows, :, span]


def attention_numbers(pieces: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """(heads + 1,) float64: each head's mean normalised entropy, then the largest logit; None
    when there are no pieces.

    pieces: an attention's logits, (batch, heads, queries, keys) each. A query's entropy
    -Σ p ln p of p = softmax(logits) is divided by ln of its allowed keys (those whose logit is
    above the dtype's lowest tenth: a masked key's is -inf or the dtype's lowest value): 1 is
    uniform attention over them, 0 all of it on one key. Queries with fewer than two allowed
    keys (the first query of a causal mask) are left out. The largest logit is over the
    allowed ones. A float32 CPU piece holding no NaN or +inf is read by the C kernel
    (fused.attention: ln S - U / S per query, S = Σ e, U = Σ e d, e = exp(d), d = logit - max;
    one read of each query's row); any other by torch, as -Σ p · log_softmax(logits) (a masked
    key's log-probability, -inf, raised to -1e30, which its p of 0 cancels). The two agree to
    float32 rounding; NaN and +inf follow torch's softmax."""
    total = counted_total = top = kernel_sums = None
    for logits in pieces:
        floor = torch.finfo(logits.dtype if logits.is_floating_point()
                            else torch.float32).min / 10
        lg = logits.float()
        largest = lg.amax()  # (NaN where one is NaN)
        if fused.takes_logits(lg) and math.isfinite(largest):
            # the C kernel: each row read once into the cache, no tensor made of the piece
            if kernel_sums is None:
                kernel_sums = torch.zeros(2 * lg.shape[1], dtype=torch.float64)
            fused.attention(lg, floor, kernel_sums)
        else:
            # a masked key's logit is -inf or its dtype's lowest value (NaN and -inf compare
            # False)
            keys = (lg > floor).sum(dim=-1)
            counted = keys >= 2
            log_p = torch.log_softmax(lg, dim=-1).clamp_(min=-1e30)
            entropy = -torch.linalg.vecdot(torch.softmax(lg, dim=-1), log_p)
            normalised = torch.where(counted, entropy / torch.log(keys.clamp_min(2).float()), 0.0)
            sums = normalised.sum(dim=(0, 2), dtype=torch.float64)
            counts = counted.sum(dim=(0, 2))
            total = sums if total is None else total + sums
            counted_total = counts if counted_total is None else counted_total + counts
        # the largest allowed logit: a masked one is never above an allowed one, so where the
        # largest is masked no key is allowed
        largest = torch.where(largest <= floor, torch.full((), -math.inf, device=lg.device),
                              largest).double()
        top = largest if top is None else torch.maximum(top, largest)
    if top is None:
        return None
    if kernel_sums is not None:
        sums, counts = kernel_sums.chunk(2)
        total = sums if total is None else total + sums.to(total.device)
        counted_total = counts if counted_total is None else counted_total + counts
    per_head = torch.where(counted_total > 0, total / counted_total.clamp_min(1),
                           torch.full_like(total, math.nan))
    return torch.cat([per_head, top.reshape(1)])


def rms(t: torch.Tensor, groups: int = 0) -> torch.Tensor:
    """Root mean square of `t` in float64 (per group along dim 0 with `groups`): ‖t‖ / √n, or
    √(mean² + std²) from the C kernel's moments where it takes `t` (a float32 CPU tensor: one
    read in float32 blocks summed in float64, where torch's float64 norm converts every value
    first: 0.25 ms on a 256 × 1024 tensor)."""
    if not groups and t.dim() > 0 and fused.takes(t):
        moments = fused.reduce(t.reshape(t.shape[0], -1), channels=False, near_zero=0.0,
                               edges=None, spread=False, units=False)
        if moments is not None:
            return torch.tensor([math.hypot(moments[0], moments[1])], dtype=torch.float64)
    flat = t.reshape(groups, -1) if groups else t.reshape(1, -1)
    norm = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64)  # one pass, in float64
    return norm / math.sqrt(flat.shape[1])
