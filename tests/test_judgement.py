"""Judgement that knows normalisation, residual streams and attention (actstat/analysis.py,
"Judgement"; actstat/stream.py): each rule at its threshold's boundary on records made by hand,
the numbers it judges (branch-to-stream ratio, attention entropy, largest logit) against NumPy,
the pairing of tensors on the shapes real models have, and the proof both ways on real
architectures: GPT-2, BERT, Llama, a ViT and a ResNet built from `transformers`' configs with
their own init are healthy, and the same models broken on purpose are flagged at the right
layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import actstat
from actstat import stream
from actstat.analysis import analyse_captured
from actstat.capture import capture
from actstat.config import Thresholds
from actstat.records import CapturedLayer

# -- the rules, on records made by hand ---------------------------------------------------------


def record(name: str, kind: str, std: float, *, grad: float | None = 1.0, stream=None,
           block=None, branch=None, attention=None) -> CapturedLayer:
    stats = {"mean": 0.0, "std": std, "min": -3 * std, "max": 3 * std, "near_zero": 0.0,
             "dead": 0.0}
    if kind == "weight":
        stats["spread"] = 0.5
    return CapturedLayer(name, kind, "Linear" if kind == "weight" else "Module", (8, 4), 1,
                         (4, 4) if kind == "weight" else None, stats,
                         None if grad is None else {"mean": 0.0, "std": grad}, None,
                         stream=stream, block=block, branch=branch, attention=attention)


def stack(block_stds, *, start=1.0, branch=0.3, head_std=1.0, grads=None):
    """embed (the stream's start), per block a branch row and the block's output, a final
    norm and a head."""
    rows = [record("embed", "weight", start, stream="start")]
    for k, std in enumerate(block_stds):
        rows.append(record(f"h.{k}.fc", "weight", 0.05, branch=branch))
        rows.append(record(f"h.{k}", "block", std, stream="block", block=f"h.{k}",
                           grad=None if grads is None else grads[k]))
    rows += [record("ln_f", "norm", 1.0), record("head", "weight", head_std)]
    return rows


def judged(rows, **thresholds):
    layers = analyse_captured(rows, input_std=None, thresholds=Thresholds(**thresholds))
    return {layer.name: layer for layer in layers}


@pytest.mark.parametrize("k", [1, 4])
def test_the_stream_may_grow_as_the_square_root_of_its_blocks(k):
    """The k-th block's output is `exploding` above exploding × √k × the start's std, not at
    it; and never held to the raw input (token ids: the first row)."""
    at = 10.0 * math.sqrt(k)
    stds = [1.0] * (k - 1)
    assert not judged(stack(stds + [at]))[f"h.{k - 1}"].flags
    rows = judged(stack(stds + [at * 1.001]))
    assert rows[f"h.{k - 1}"].flags == ("exploding",)
    assert rows[f"h.{k - 1}"].scale_of == "embed"
    assert rows[f"h.{k - 1}"].scale_allowed == pytest.approx(math.sqrt(k))


def test_the_stream_vanishes_below_its_start_not_its_input():
    assert not judged(stack([0.1]))["h.0"].flags
    assert judged(stack([0.0999]))["h.0"].flags == ("vanishing",)


def test_a_norm_starts_a_segment_the_head_is_held_to():
    """After the final norm (std 1), the head is held to the norm's scale, not the stream's:
    10 × 1 is the edge; and a branch row inside a block is held to no scale."""
    rows = judged(stack([5.0], head_std=10.0))
    assert not rows["head"].flags and rows["head"].scale_of == "ln_f"
    rows = judged(stack([5.0], head_std=10.01))
    assert rows["head"].flags == ("exploding",)
    assert rows["h.0.fc"].scale_of is None and rows["ln_f"].scale_of is None


@pytest.mark.parametrize("ratio, flagged", [(2.0, False), (2.0001, True)])
def test_large_branch_at_its_threshold(ratio, flagged):
    rows = judged(stack([1.0], branch=ratio))
    assert ("large_branch" in rows["h.0.fc"].flags) is flagged
    assert rows["h.0.fc"].branch_ratio == ratio


@pytest.mark.parametrize("entropy, top, flags", [
    (0.1, 50.0, ()), (0.0999, 50.0, ("entropy_collapse",)),
    (0.5, 50.01, ("logit_growth",))])
def test_attention_flags_at_their_thresholds(entropy, top, flags):
    rows = stack([1.0])
    rows.insert(1, record("h.0.attn", "attention", 0.1, attention=(0.9, entropy, 0.8, top)))
    row = judged(rows)["h.0.attn"]
    assert row.flags == flags and row.attention_entropy == (0.9, entropy, 0.8)
    assert row.max_logit == top


def test_gradients_are_judged_along_the_stream_and_within_segments():
    """A stream row's gradient against the last stream row's; the rows before the stream (the
    embeddings) against their own segment's last row, never across the final norm."""
    grads = [1.0, 1.0, 0.0999]  # the first two are 10.01 × the last block's
    rows = stack([1.0, 1.0, 1.0], grads=grads)
    rows.insert(0, record("wte", "weight", 0.02, grad=50.0))
    got = judged(rows)
    assert got["h.0"].flags == ("grad_exploding",) and got["h.0"].grad_of == "h.2"
    assert not got["wte"].flags and got["wte"].grad_of == "wte"
    assert got["head"].grad_of is None


def test_the_plain_mlp_keeps_its_references():
    """No norm, no block: every row against the input's std, gradients against the last hidden
    layer (the head is not one)."""
    rows = [record("0", "weight", 1.0, grad=1.0), record("2", "weight", 0.5, grad=0.0999),
            record("4", "weight", 1.0, grad=1.0), record("6", "weight", 0.01, grad=5.0)]
    layers = analyse_captured(rows, input_std=2.0, thresholds=Thresholds())
    by_name = {layer.name: layer for layer in layers}
    assert by_name["0"].scale_of == "input" and by_name["0"].grad_of == "4"
    assert by_name["2"].flags == ("grad_vanishing",)
    assert not by_name["6"].flags  # the head: small logits are not vanishing


# -- the numbers: attention, the branch ratio, the pairing ---------------------------------------


class Attend(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4, need_weights: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x, mask=None, padding=None):
        return self.attn(x, x, x, attn_mask=mask, key_padding_mask=padding,
                         need_weights=self.need_weights, average_attn_weights=False)[0]


def entropy_reference(logits: np.ndarray) -> tuple[np.ndarray, float]:
    """(each head's mean normalised entropy, the largest allowed logit) in float64 NumPy:
    logits (batch, heads, L, S), -inf where a key is masked."""
    allowed = np.isfinite(logits)
    shifted = np.where(allowed, logits - np.where(allowed, logits, -np.inf).max(-1, keepdims=True),
                       -np.inf)
    p = np.exp(shifted)
    p /= p.sum(-1, keepdims=True)
    h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1)
    keys = allowed.sum(-1)
    counted = keys >= 2
    normalised = np.where(counted, h / np.log(np.maximum(keys, 2)), 0)
    per_head = normalised.sum(axis=(0, 2)) / counted.sum(axis=(0, 2))
    return per_head, float(np.where(allowed, logits, -np.inf).max())


@pytest.mark.parametrize("mask", ["none", "causal", "padding"])
@pytest.mark.parametrize("path", ["attention", "softmax", "again"])
def test_multihead_attention_entropy_and_logits_are_numpys(mask, path, monkeypatch):
    """nn.MultiheadAttention gives each head's entropy and the largest logit as NumPy computes
    them from its projections, whichever way they are read: from the attention operation its
    function ends in (need_weights=False), from its softmax (need_weights=True), or, where
    neither is one the dispatcher knows, from its projections done again. A causal mask leaves
    the first query (one key) out; a padded key takes no part."""
    torch.manual_seed(0)
    model = Attend(need_weights=path == "softmax").eval()
    with torch.no_grad():
        model.attn.in_proj_weight.mul_(4)  # logits of a few units, entropies well below 1
    if path == "again":
        monkeypatch.setattr(stream, "ATTENTION_OPERATIONS", {})
        monkeypatch.setattr(stream, "SOFTMAX_OPERATIONS", set())
    else:  # read inside the call: its projections are not done again
        monkeypatch.setattr(stream, "mha_pieces", None)
    x = torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(1))
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, -2:] = True
    inputs = {"none": x, "causal": (x, future), "padding": (x, None, padding)}[mask]
    got = capture(model, inputs, grad=path != "attention").layers
    row = next(layer for layer in got if layer.kind == "attention")
    w_q, w_k, _ = model.attn.in_proj_weight.detach().double().numpy().reshape(3, 16, 16)
    b_q, b_k, _ = model.attn.in_proj_bias.detach().double().numpy().reshape(3, 16)
    a = x.double().numpy()
    q = (a @ w_q.T + b_q).reshape(3, 6, 4, 4).transpose(0, 2, 1, 3)
    k = (a @ w_k.T + b_k).reshape(3, 6, 4, 4).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / 2.0
    if mask == "causal":
        logits = np.where(future.numpy(), -np.inf, logits)
    if mask == "padding":
        logits[1, ..., -2:] = -np.inf
    heads, top = entropy_reference(logits)
    assert np.allclose(row.attention[:-1], heads, rtol=1e-5)
    assert row.attention[-1] == pytest.approx(top, rel=1e-5)
    assert min(heads) < 0.9  # a test that can fail: not uniform attention


@pytest.mark.parametrize("piece_bytes", [stream.PIECE_BYTES, 4 * 5 * 4 * 3, 1])
@pytest.mark.parametrize("mask", ["causal", "bool", "float", "padding"])
def test_sdpa_attention_numbers_are_numpys_whatever_the_pieces(piece_bytes, mask, monkeypatch,
                                                                reductions):
    """SDPA's logits computed again from its query and key (grouped-query: 4 query heads on 2
    key heads) and its mask, a piece at a time: whole samples, runs of 3 queries, one query;
    each head's entropy and the largest logit as NumPy computes them at once."""
    monkeypatch.setattr(stream, "PIECE_BYTES", piece_bytes)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g) * 3, torch.randn(2, 2, 5, 8, generator=g)
    future = np.triu(np.ones((5, 5), dtype=bool), 1)
    kwargs: dict = {"is_causal": True} if mask == "causal" else {}
    if mask == "bool":
        kwargs["attn_mask"] = torch.from_numpy(~future)  # (L, S): True takes part
    if mask == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 5, 5, generator=g)
    if mask == "padding":  # the last key of sample 1 is padding
        allowed = torch.ones(2, 1, 1, 5, dtype=torch.bool)
        allowed[1, ..., -1] = False
        kwargs["attn_mask"] = allowed
    got = stream.attention_numbers(stream.sdpa_pieces(q, k, k, enable_gqa=True, **kwargs))
    a, b = q.double().numpy(), np.repeat(k.double().numpy(), 2, axis=1)
    logits = a @ b.transpose(0, 1, 3, 2) / math.sqrt(8)
    if mask in ("causal", "bool"):
        logits = np.where(future, -np.inf, logits)
    if mask == "float":
        logits = logits + kwargs["attn_mask"].double().numpy()
    if mask == "padding":
        logits[1, ..., -1] = -np.inf
    heads, top = entropy_reference(logits)
    assert np.allclose(got[:-1].numpy(), heads, rtol=1e-5)
    assert float(got[-1]) == pytest.approx(top, rel=1e-5)
    assert min(heads) < 0.9


@pytest.mark.parametrize("piece_bytes", [stream.PIECE_BYTES, 7])
def test_a_softmax_is_read_a_piece_at_a_time(piece_bytes, monkeypatch, reductions):
    """Eager attention's softmax (batch, heads, L, S), its logits read in pieces: the numbers
    NumPy takes of the whole; a masked key (-inf) adds nothing."""
    monkeypatch.setattr(stream, "PIECE_BYTES", piece_bytes)
    logits = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(2)) * 4
    logits.masked_fill_(torch.ones(6, 6, dtype=torch.bool).triu(1), -math.inf)
    got = stream.attention_numbers(stream.softmax_pieces(logits))
    heads, top = entropy_reference(logits.double().numpy())
    assert np.allclose(got[:-1].numpy(), heads, rtol=1e-5)
    assert float(got[-1]) == pytest.approx(top, rel=1e-5)
    assert stream.attention_numbers(iter(())) is None


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_a_poisoned_logit_reads_as_torch_reads_it_on_either_path(poison, reductions):
    """Logits holding NaN or +inf are taken by torch's rules whatever the path (the kernel
    refuses them): the poisoned head's entropy and the largest logit are what torch's softmax
    makes of them, the other heads' as before; and logits with no key allowed at all have no
    entropy and a largest logit of -inf."""
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    clean = stream.attention_numbers(stream.softmax_pieces(logits))
    logits[1, 2, 0, 3] = poison
    got = stream.attention_numbers(stream.softmax_pieces(logits))
    assert torch.allclose(got[:2], clean[:2], rtol=1e-6)
    assert math.isnan(got[2])
    assert math.isnan(got[-1]) if math.isnan(poison) else got[-1] == math.inf
    masked = stream.attention_numbers(stream.softmax_pieces(torch.full((1, 2, 3, 4), -math.inf)))
    assert torch.isnan(masked[:2]).all() and masked[-1] == -math.inf


def _step(block, kind, x):
    out = block(x)
    if kind == "left":
        return x + out
    if kind == "right":
        return out + x
    out += x
    return out


class Blocks(nn.Module):
    def __init__(self, dim: int = 12):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualStep(dim, kind) for kind in ("left", "right",
                                                                         "inplace"))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class ResidualStep(nn.Module):
    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.fc, self.kind = nn.Linear(dim, dim), kind

    def forward(self, x):
        return _step(self.fc, self.kind, x)


def test_the_branch_ratio_is_the_rms_of_the_branch_over_the_streams():
    """rms(branch) / rms(stream) at each add, however it is written (x + f, f + x, out += x),
    on the row of the branch's tensor; each block's output is the stream."""
    torch.manual_seed(0)
    model = Blocks()
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(3)) * 3
    got = {layer.name: layer for layer in capture(model, x, grad=False).layers}
    h = x.double()
    for k, block in enumerate(model.blocks):
        f = F.linear(h, block.fc.weight.double(), block.fc.bias.double())
        want = f.square().mean().sqrt() / h.square().mean().sqrt()
        assert got[f"blocks.{k}.fc"].branch == pytest.approx(want.item(), rel=1e-6)
        assert got[f"blocks.{k}"].stream == "block"
        h = h + f
    # the first block takes the data itself: the stream starts at the input
    assert "blocks.0:input" not in got
    run = actstat.profile(model, x, grad=False).runs[0]
    assert [layer.scale_of for layer in run.layers if layer.stream] == ["input"] * 3


class Rotary(nn.Module):
    """Reads its input's dtype and device only (Llama's rotary embedding)."""

    def forward(self, x):
        t = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
        return torch.stack([t.cos(), t.sin()], dim=-1).expand(x.shape[0], -1, -1)


class FooRMSNorm(nn.Module):
    """A normalisation layer of a library actstat does not import."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Decoder(nn.Module):
    def __init__(self, vocab: int = 30, dim: int = 16):
        super().__init__()
        self.embed, self.rotary = nn.Embedding(vocab, dim), Rotary()
        self.norm, self.head = FooRMSNorm(dim), nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        self.rotary(x)
        n = self.norm(x)
        return self.head(n.view(-1, n.shape[-1]).view(n.shape))  # views of the norm's output


def test_a_rotary_table_a_library_norm_and_views_pair_as_they_are():
    """The rotary module only read the embedding's dtype (and returns another shape): not its
    activation. `FooRMSNorm` is a norm by its name. A view of the norm's whole output is that
    output: the head has no `:input` row of it."""
    torch.manual_seed(0)
    ids = torch.randint(30, (4, 7))
    layers = capture(Decoder(), ids, ids).layers
    assert [(layer.name, layer.kind) for layer in layers] == [
        ("embed", "weight"), ("norm", "norm"), ("head", "weight")]
    rows = actstat.profile(Decoder(), ids, ids).runs[0].layers
    assert rows[0].module == "Embedding" and rows[1].module == "FooRMSNorm"


# -- real architectures, both ways ---------------------------------------------------------------

transformers = pytest.importorskip("transformers")
if not transformers.utils.is_torch_available():
    pytest.skip(f"transformers {transformers.__version__} cannot use torch {torch.__version__}",
                allow_module_level=True)

VOCAB, LENGTH, BATCH = 100, 16, 4


def build(name: str, attention: str = "sdpa") -> tuple[nn.Module, str]:
    t = transformers
    if name == "gpt2":
        config = t.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=4, n_head=4,
                              bos_token_id=0, eos_token_id=0)
        model = t.GPT2LMHeadModel(config)
    elif name == "bert":
        config = t.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=256,
                              max_position_embeddings=64)
        model = t.BertForMaskedLM(config)
    elif name == "llama":
        config = t.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2,
                               intermediate_size=176, max_position_embeddings=64,
                               bos_token_id=0, eos_token_id=0)
        model = t.LlamaForCausalLM(config)
    elif name == "vit":
        config = t.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                             num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                             num_labels=10)
        model = t.ViTForImageClassification(config)
    else:
        config = t.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                depths=[2, 2], layer_type="basic", num_labels=10)
        model = t.ResNetForImageClassification(config)
    if name != "resnet":
        model.config._attn_implementation = attention
        model.set_attn_implementation(attention)
    return model, "image" if name in ("vit", "resnet") else "tokens"


def measure(model: nn.Module, kind: str, *, train: bool = False):
    model.train(train)
    g = torch.Generator().manual_seed(0)
    if kind == "tokens":
        ids = torch.randint(VOCAB, (BATCH, LENGTH), generator=g)
        return actstat.profile(model, {"input_ids": ids}, ids, output="logits",
                               loss=lambda out, t: F.cross_entropy(
                                   out.reshape(-1, out.shape[-1]), t.reshape(-1))).runs[0]
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    return actstat.profile(model, {"pixel_values": images},
                           torch.randint(10, (BATCH,), generator=g), output="logits").runs[0]


MODELS = ["gpt2", "bert", "llama", "vit", "resnet"]
# one block's residual branch (its MLP's output layer; the ResNet's last BatchNorm)
BRANCH = {"gpt2": "transformer.h.1.mlp.c_proj", "bert": "bert.encoder.layer.1.output.dense",
          "llama": "model.layers.1.mlp.down_proj", "vit": "vit.layers.1.mlp.fc2",
          "resnet": "resnet.encoder.stages.0.layers.1.layer.1.normalization"}
# one block's query and key weights, and the row that holds its attention's numbers
QUERY_KEY = {
    "gpt2": (["transformer.h.1.attn.c_attn"], "transformer.h.1.attn.c_proj"),
    "bert": (["bert.encoder.layer.1.attention.self.query",
              "bert.encoder.layer.1.attention.self.key"], "bert.encoder.layer.1.attention.self"),
    "llama": (["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"],
              "model.layers.1.self_attn.o_proj"),
    "vit": (["vit.layers.1.attention.q_proj", "vit.layers.1.attention.k_proj"],
            "vit.layers.1.attention.o_proj"),
}


def rows_of(run):
    return {layer.name: layer for layer in run.layers}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_real_architectures_at_their_own_init_are_healthy(name):
    """Each model's own init (`_init_weights`), ResNet in training mode as it is trained: no
    flag. Its stream, its branches and (transformers) its attention are found."""
    torch.manual_seed(0)
    model, kind = build(name)
    run = measure(model, kind, train=name == "resnet")
    flagged = {layer.name: layer.flags for layer in run.layers if layer.flags}
    assert run.verdict == "healthy" and not flagged, flagged
    # (the ResNet's downsampling block adds a projection, not its input: no identity stream)
    assert sum(layer.stream == "block" for layer in run.layers) == (3 if name == "resnet" else 4)
    assert sum(layer.stream == "start" for layer in run.layers) == 1
    ratios = [layer.branch_ratio for layer in run.layers if layer.branch_ratio is not None]
    assert len(ratios) >= (3 if name == "resnet" else 8) and max(ratios) < 2
    if name != "resnet":
        entropies = [e for layer in run.layers if layer.attention_entropy
                     for e in layer.attention_entropy]
        assert len(entropies) == 16 and min(entropies) > 0.9


def broken(name: str, how: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = build(name)
    with torch.no_grad():
        if how in ("randn", "zeros"):
            for p in model.parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p) if how == "randn" else nn.init.zeros_(p)
        elif how == "branch":
            model.get_submodule(BRANCH[name]).weight.mul_(100)
        else:
            for module_name in QUERY_KEY[name][0]:
                weight = model.get_submodule(module_name).weight
                if name == "gpt2":  # Conv1D (in, 3 · dim): the query and key columns
                    weight[:, : 2 * weight.shape[1] // 3].mul_(30)
                else:
                    weight.mul_(30)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("how", ["randn", "zeros", "branch", "query_key"])
def test_the_same_models_broken_on_purpose_are_flagged_at_the_right_layer(name, how):
    if how == "query_key" and name == "resnet":
        pytest.skip("a ResNet has no attention")
    model = broken(name, how)
    kind = "image" if name in ("vit", "resnet") else "tokens"
    run = measure(model, kind, train=name == "resnet")
    rows = rows_of(run)
    if how == "randn":
        if name == "resnet":
            # BatchNorm in training mode normalises whatever a convolution's weights make: the
            # forward does not see their scale (healthy); at init in eval mode (running
            # statistics 0 and 1) the same weights blow the stream up
            assert run.verdict == "healthy"
            run = measure(model, kind, train=False)
            assert run.verdict in ("large_branch", "exploding"), run.verdict
        else:
            # N(0, 1) weights: a branch many times its stream, or the stream exploding
            assert run.verdict in ("large_branch", "exploding"), run.verdict
            assert any("large_branch" in layer.flags for layer in run.layers)
    elif how == "zeros":
        assert run.verdict == "symmetric"
        first = next(layer for layer in run.layers if layer.kind == "weight")
        assert "symmetric" in first.flags
    elif how == "branch":
        assert "large_branch" in rows[BRANCH[name]].flags
        assert rows[BRANCH[name]].branch_ratio > 2
        assert run.verdict == "large_branch"
        others = [layer.name for layer in run.layers if "large_branch" in layer.flags]
        assert others == [BRANCH[name]]
    else:
        where = QUERY_KEY[name][1]
        assert {"entropy_collapse", "logit_growth"} <= set(rows[where].flags)
        assert run.verdict == "entropy_collapse"
        assert [layer.name for layer in run.layers if "entropy_collapse" in layer.flags] == [where]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_eager_and_sdpa_attention_give_the_same_numbers(name):
    """Hugging Face's eager attention shows its softmax; SDPA keeps it to itself and actstat
    computes it from the query, key, mask and scale: the same entropies and logits."""
    numbers = []
    for attention in ("eager", "sdpa"):
        torch.manual_seed(0)
        model, kind = build(name, attention)
        with torch.no_grad():
            for module_name in QUERY_KEY[name][0]:
                model.get_submodule(module_name).weight.mul_(8)  # far from uniform
        run = measure(model, kind)
        numbers.append([(layer.attention_entropy, layer.max_logit) for layer in run.layers
                        if layer.attention_entropy is not None])
    (eager, sdpa) = numbers
    assert len(eager) == len(sdpa) == 4
    for (h_e, top_e), (h_s, top_s) in zip(eager, sdpa):
        assert np.allclose(h_e, h_s, rtol=1e-4) and top_e == pytest.approx(top_s, rel=1e-4)
    assert min(min(h) for h, _ in eager) < 0.95


def test_an_attention_operation_of_another_making_falls_back_to_the_projections(monkeypatch):
    """Where the attention operation nn.MultiheadAttention's function runs takes arguments this
    torch's schema does not (another version's), its numbers come from its projections, and
    the forward goes on: the same numbers."""
    model = Attend().eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    expected = next(layer for layer in capture(model, x, grad=False).layers
                    if layer.kind == "attention").attention

    def wrong(*args, unknown, **kwargs):  # a signature that never matches
        raise AssertionError("not called")

    monkeypatch.setattr(stream, "ATTENTION_OPERATIONS",
                        dict.fromkeys(stream.ATTENTION_OPERATIONS, wrong))
    again = []
    pieces = stream.mha_pieces
    monkeypatch.setattr(stream, "mha_pieces", lambda *a, **k: again.append(1) or pieces(*a, **k))
    got = next(layer for layer in capture(model, x, grad=False).layers
               if layer.kind == "attention").attention
    assert again and np.allclose(got, expected, rtol=1e-6)
