"""Stream: what a module hook cannot see inside a residual block, seen through torch's function
mode: the adds that put a branch onto the residual stream, and the attention probabilities of
a softmax or of `F.scaled_dot_product_attention`.

actstat/capture.py's Probe enters `Watch` for a pass over a model with repeated blocks and tells
it where the stream is (a block's input, and what the block makes of it); `Watch` calls back:

- `on_add(branch, stream, block)` before an add whose one operand is the stream and whose other
  is a tensor of the same shape (`x + f(x)`, `f(x) + x`, `out += x`, `torch.add`): the branch.
  The add's result (for an in-place add, the same tensor) is the stream from then on.
- `on_attention(logits, probabilities)` for a softmax over the last dimension taken inside an
  attention module (eager attention), or for a scaled-dot-product attention call, whose
  probabilities it computes from the query, the key, the mask and the scale (SDPA keeps them
  to itself).

Nothing here hooks a module (that is capture.py's alone); nothing here copies to the host: the
arithmetic (`rms`, `attention_numbers`) stays on the tensors' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

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
    paused)."""

    def __init__(self, *, active: Callable[[], bool], is_stream: Callable[[torch.Tensor], bool],
                 mark: Callable[[torch.Tensor], None],
                 on_add: Callable[[torch.Tensor, torch.Tensor], None],
                 in_attention: Callable[[], bool],
                 on_attention: Callable[[torch.Tensor, torch.Tensor], None]):
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
        if func is SDPA and self.active():
            out = func(*args, **kwargs)
            with torch.no_grad():
                logits = sdpa_logits(*args, **kwargs)
                if logits is not None:
                    self.on_attention(logits, torch.softmax(logits.float(), dim=-1))
            return out
        if func is MHA and self.active():
            # nn.MultiheadAttention's: its softmax runs while the mode is off (inside this
            # handler), so its logits are computed from its arguments
            out = func(*args, **kwargs)
            with torch.no_grad():
                logits = mha_logits(*args, **kwargs)
                if logits is not None:
                    self.on_attention(logits, torch.softmax(logits, dim=-1))
            return out
        out = func(*args, **kwargs)
        if func in SOFTMAXES and self.active() and self.in_attention() and _last_dim(args, kwargs):
            logits = args[0]
            if isinstance(logits, torch.Tensor) and logits.dim() >= 3:
                with torch.no_grad():
                    self.on_attention(logits.detach(), out.detach())
        return out

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


def _last_dim(args: tuple, kwargs: dict) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    logits = args[0] if args else None
    return (isinstance(logits, torch.Tensor) and isinstance(dim, int)
            and dim in (-1, logits.dim() - 1))


def sdpa_logits(query: torch.Tensor, key: torch.Tensor, value: Any = None,
                attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False, **_: Any) -> torch.Tensor | None:
    """The attention logits that `F.scaled_dot_product_attention(query, key, ...)` softmaxes:
    q kᵀ · scale plus the mask (a boolean mask's False and the causal mask's future: -inf),
    key heads repeated for grouped-query attention; (..., heads, L, S). None for shapes it does
    not take (nested tensors, fewer than 3 dimensions)."""
    if query.dim() < 3 or key.dim() != query.dim() or getattr(query, "is_nested", False):
        return None
    q, k = query.detach().float(), key.detach().float()
    if q.dim() >= 4 and k.shape[-3] != q.shape[-3]:
        if k.shape[-3] == 0 or q.shape[-3] % k.shape[-3]:
            return None
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    factor = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    logits = (q * factor) @ k.transpose(-2, -1)  # (the scale on the smaller operand)
    length, source = logits.shape[-2], logits.shape[-1]
    if is_causal:
        future = torch.ones(length, source, dtype=torch.bool, device=logits.device).triu_(1)
        logits.masked_fill_(future, -math.inf)
    if attn_mask is not None:
        mask = attn_mask.detach()
        if mask.dtype == torch.bool:
            logits.masked_fill_(~mask, -math.inf)
        else:
            logits += mask.float()
    return logits


def mha_logits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               embed_dim_to_check: int, num_heads: int, in_proj_weight: torch.Tensor | None,
               in_proj_bias: torch.Tensor | None, bias_k: torch.Tensor | None = None,
               bias_v: torch.Tensor | None = None, add_zero_attn: bool = False,
               *args: Any, key_padding_mask: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None, use_separate_proj_weight: bool = False,
               q_proj_weight: torch.Tensor | None = None,
               k_proj_weight: torch.Tensor | None = None, static_k: torch.Tensor | None = None,
               is_causal: bool = False, **_: Any) -> torch.Tensor | None:
    """The attention logits of `F.multi_head_attention_forward(query, key, ...)` (its inputs
    (L, E) or (L, N, E), as nn.MultiheadAttention passes them): the projected query and key,
    split into heads, q kᵀ / √head_dim, plus the masks; (N, heads, L, S). None for what it
    does not take: extra key biases, a zero attention row, static keys."""
    if bias_k is not None or add_zero_attn or static_k is not None or query.dim() not in (2, 3):
        return None
    q_in, k_in = query.detach().float(), key.detach().float()
    if q_in.dim() == 2:
        q_in, k_in = q_in.unsqueeze(1), k_in.unsqueeze(1)
    length, batch, embed = q_in.shape
    if use_separate_proj_weight:
        if q_proj_weight is None or k_proj_weight is None:
            return None
        w_q, w_k = q_proj_weight.float(), k_proj_weight.float()
    elif in_proj_weight is not None:
        w_q, w_k, _ = in_proj_weight.detach().float().chunk(3)
    else:
        return None
    b_q = b_k = None
    if in_proj_bias is not None:
        b_q, b_k, _ = in_proj_bias.detach().float().chunk(3)
    head = embed // num_heads
    q = F.linear(q_in, w_q.detach(), b_q).reshape(length, batch * num_heads, head)
    k = F.linear(k_in, w_k.detach(), b_k).reshape(k_in.shape[0], batch * num_heads, head)
    logits = (q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2)) / math.sqrt(head)
    logits = logits.reshape(batch, num_heads, length, k_in.shape[0])
    if attn_mask is not None:
        mask = attn_mask.detach()
        mask = mask.reshape(batch, num_heads, length, -1) if mask.dim() == 3 else mask
        logits = (logits.masked_fill(mask, -math.inf) if mask.dtype == torch.bool
                  else logits + mask.float())
    elif is_causal:
        allowed = torch.ones(length, logits.shape[-1], dtype=torch.bool,
                             device=logits.device).tril()
        logits = logits.masked_fill(~allowed, -math.inf)
    if key_padding_mask is not None:
        pad = key_padding_mask.detach().reshape(batch, 1, 1, -1)
        logits = (logits.masked_fill(pad, -math.inf) if pad.dtype == torch.bool
                  else logits + pad.float())
    return logits


def rms(t: torch.Tensor, groups: int = 0) -> torch.Tensor:
    """Root mean square of `t` in float64 (per group along dim 0 with `groups`): ‖t‖ / √n."""
    flat = t.reshape(groups, -1) if groups else t.reshape(1, -1)
    norm = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64)  # one pass, in float64
    return norm / math.sqrt(flat.shape[1])


def attention_numbers(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """(heads + 1,) float64: each head's mean normalised entropy, then the largest logit.

    logits, probabilities: (batch, heads, queries, keys) (or (heads, queries, keys), or with
    more leading dims: all but the last three are the batch). A query's entropy -Σ p ln p is
    divided by ln of its allowed keys (those whose logit is above the dtype's lowest tenth: a
    masked key's is -inf or the dtype's lowest value): 1 is uniform attention over them, 0 all of
    it on one key. Queries with fewer than two allowed keys (the first query of a causal mask)
    are left out. The largest logit is over the allowed ones."""
    lg = logits.detach().float()
    p = probabilities.detach().float()
    if lg.dim() == 3:
        lg, p = lg.unsqueeze(0), p.unsqueeze(0)
    heads = lg.shape[-3]
    lg = lg.reshape(-1, heads, lg.shape[-2], lg.shape[-1])
    p = p.reshape(lg.shape)
    # a masked key's logit is -inf or its dtype's lowest value (NaN and -inf compare False)
    floor = torch.finfo(logits.dtype if logits.is_floating_point() else torch.float32).min / 10
    allowed = lg > floor
    keys = allowed.sum(dim=-1)
    # -p ln p (0 at p = 0, so a masked key adds nothing)
    entropy = torch.special.entr(p).sum(dim=-1)
    counted = keys >= 2
    normalised = entropy / torch.log(keys.clamp_min(2).float())
    per_head = ((normalised * counted).sum(dim=(0, 2))
                / counted.sum(dim=(0, 2)).clamp_min(1)).double()
    per_head = torch.where(counted.any(dim=2).any(dim=0), per_head,
                           torch.full_like(per_head, math.nan))
    # the largest allowed logit: a masked one is never above an allowed one
    top = torch.where(allowed.any(), lg.amax(), torch.full((), -math.inf,
                                                           device=lg.device)).double().reshape(1)
    return torch.cat([per_head, top])
