"""Hugging Face models, when transformers is installed: a tiny GPT-2 and BERT built from configs
(nothing is downloaded), profiled under their own init (`post_init` -> `_init_weights`) through
actstat.profile, and GPT-2 under `--init kaiming` through the CLI. The numbers are checked
against the models' own forward, watched with plain torch hooks and recomputed with NumPy."""

from __future__ import annotations

import json
import math
from importlib.util import module_from_spec, spec_from_file_location

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import actstat

transformers = pytest.importorskip("transformers")
if not transformers.utils.is_torch_available():  # transformers 5 needs torch >= 2.6
    pytest.skip(f"transformers {transformers.__version__} cannot use torch {torch.__version__}",
                allow_module_level=True)

# importing transformers and building a model take seconds
pytestmark = pytest.mark.slow

VOCAB, LENGTH, BATCH, DIM, LAYERS = 100, 16, 8, 32, 2
INIT_STD = 0.02  # initializer_range: HF's _init_weights draws N(0, 0.02²) for Linear and Embedding


def gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=LAYERS, n_embd=DIM, n_head=2, vocab_size=VOCAB,
                                     n_positions=LENGTH, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()  # built from a config it is in train mode


def bert(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(num_hidden_layers=LAYERS, hidden_size=DIM,
                                     num_attention_heads=2, intermediate_size=2 * DIM,
                                     vocab_size=VOCAB, max_position_embeddings=LENGTH,
                                     num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def token_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(seed))


def watched(model: torch.nn.Module, names: list[str], inputs: dict) -> tuple[dict, object]:
    """The model's output on `inputs`, and the first tensor of each named module's output (HF
    layers return tuples) as float64 NumPy arrays, kept by plain forward hooks."""
    kept: dict[str, np.ndarray] = {}

    def keeper(name: str):
        def hook(module, args, out):
            tensor = out if isinstance(out, torch.Tensor) else out[0]
            kept[name] = tensor.detach().double().numpy()
        return hook

    handles = [model.get_submodule(name).register_forward_hook(keeper(name)) for name in names]
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return kept, out


def close(got: float | None, want: float, scale: float = 0.0, rtol: float = 1e-5) -> bool:
    return got is not None and abs(got - want) <= rtol * (abs(want) + abs(scale)) + 1e-12


def weight_std(row) -> float:
    """std(W) of a weight row, from what the report holds: std(dL/dW) / (grad:data)."""
    return row.grad.weight_std / row.grad.grad_to_data


# (fan_in, fan_out) of each of GPT-2's weight layers; Conv1D is stored (in, out)
GPT2_FANS = {"attn.c_attn": (DIM, 3 * DIM), "attn.c_proj": (DIM, DIM),
             "mlp.c_fc": (DIM, 4 * DIM), "mlp.c_proj": (4 * DIM, DIM)}


def test_gpt2_under_its_own_init():
    model = gpt2()
    ids = token_ids()
    report = actstat.profile(model, ids, ids, output="logits")
    rows = {row.name: row for row in report.runs[0].layers}

    blocks = [row for row in report.runs[0].layers if row.kind == "block"]
    assert [(b.name, b.module) for b in blocks] == [(f"transformer.h.{i}", "GPT2Block")
                                                    for i in range(LAYERS)]
    for i in range(LAYERS):
        for layer, fans in GPT2_FANS.items():
            row = rows[f"transformer.h.{i}.{layer}"]
            assert row.kind == "weight" and row.module.startswith("Conv1D"), row
            assert (row.fan_in, row.fan_out) == fans, row.name
    assert (rows["lm_head"].fan_in, rows["lm_head"].fan_out) == (DIM, VOCAB)
    weights = [row for row in report.runs[0].layers if row.kind == "weight"]
    assert {"transformer.wte", "transformer.wpe", "lm_head"} <= {row.name for row in weights}
    for row in weights:
        g = row.grad
        assert g is not None and all(math.isfinite(v) for v in (g.mean, g.std, g.weight_std)), row
        assert g.grad_to_data is not None and g.grad_to_data > 0, row

    names = [b.name for b in blocks] + ["transformer.h.0.ln_1"]
    kept, out = watched(model, names, {"input_ids": ids})
    for b in blocks:
        assert close(b.post.std, kept[b.name].std()), b.name
        assert close(b.post.mean, kept[b.name].mean(), kept[b.name].std()), b.name
    # the first Conv1D's output, x @ W + b, from ln_1's output and the weights
    c_attn = model.transformer.h[0].attn.c_attn
    projected = (kept["transformer.h.0.ln_1"] @ c_attn.weight.detach().double().numpy()
                 + c_attn.bias.detach().double().numpy())
    assert close(rows["transformer.h.0.attn.c_attn"].post.std, projected.std())
    # the token embedding's output is the rows of its table that the ids pick
    wte = model.transformer.wte.weight.detach().double().numpy()
    assert close(rows["transformer.wte"].post.std, wte[ids.numpy()].std())
    assert rows["transformer.wte"].post.std == pytest.approx(INIT_STD, rel=0.15)

    # _init_weights: N(0, 0.02²), and GPT-2's residual projections 0.02 / √(2 · layers)
    for i in range(LAYERS):
        for layer in GPT2_FANS:
            weight = model.get_submodule(f"transformer.h.{i}.{layer}").weight
            row = rows[f"transformer.h.{i}.{layer}"]
            assert close(weight_std(row), weight.detach().double().numpy().std(), rtol=1e-4)
            scale = INIT_STD / math.sqrt(2 * LAYERS) if layer.endswith("c_proj") else INIT_STD
            assert weight_std(row) == pytest.approx(scale, rel=0.1), row.name

    logits = out.logits.double()
    want = F.cross_entropy(logits.reshape(-1, VOCAB), ids.reshape(-1)).item()
    assert close(report.runs[0].loss, want, rtol=1e-4)


# (fan_in, fan_out) of each of BERT's weight layers in one encoder layer
BERT_FANS = {"attention.self.query": (DIM, DIM), "attention.self.key": (DIM, DIM),
             "attention.self.value": (DIM, DIM), "attention.output.dense": (DIM, DIM),
             "intermediate.dense": (DIM, 2 * DIM), "output.dense": (2 * DIM, DIM)}


def test_bert_classifier_with_an_attention_mask_under_its_own_init():
    model = bert()
    ids = token_ids()
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[: BATCH // 2, 2:] = 0  # half the batch is 2 tokens and padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    labels = torch.randint(3, (BATCH,), generator=torch.Generator().manual_seed(2))
    report = actstat.profile(model, inputs, labels, output="logits")
    rows = {row.name: row for row in report.runs[0].layers}

    blocks = [row for row in report.runs[0].layers if row.kind == "block"]
    assert [(b.name, b.module) for b in blocks] == [(f"bert.encoder.layer.{i}", "BertLayer")
                                                    for i in range(LAYERS)]
    for i in range(LAYERS):
        for layer, fans in BERT_FANS.items():
            row = rows[f"bert.encoder.layer.{i}.{layer}"]
            assert row.kind == "weight" and row.module.startswith("Linear"), row
            assert (row.fan_in, row.fan_out) == fans, row.name
            assert row.grad is not None and row.grad.grad_to_data is not None, row.name
            assert math.isfinite(row.grad.std) and row.grad.grad_to_data > 0, row.name
    assert (rows["classifier"].fan_in, rows["classifier"].fan_out) == (DIM, 3)
    assert rows["bert.embeddings.LayerNorm"].kind == "norm"

    kept, out = watched(model, [b.name for b in blocks], inputs)
    for b in blocks:
        assert close(b.post.std, kept[b.name].std()), b.name
        assert close(b.post.mean, kept[b.name].mean(), kept[b.name].std()), b.name
    words = model.bert.embeddings.word_embeddings.weight.detach().double().numpy()
    assert close(rows["bert.embeddings.word_embeddings"].post.std, words[ids.numpy()].std())
    query = rows["bert.encoder.layer.0.attention.self.query"]
    assert weight_std(query) == pytest.approx(INIT_STD, rel=0.1)

    assert close(report.runs[0].loss, F.cross_entropy(out.logits.double(), labels).item(),
                 rtol=1e-4)
    # the mask reached the model: attention averages the values of fewer tokens on the padded
    # samples, so its output projection's std is the masked forward's, not the unmasked one's
    dense = "bert.encoder.layer.0.attention.output.dense"
    masked, _ = watched(model, [dense], inputs)
    unmasked, _ = watched(model, [dense], {"input_ids": ids})
    assert close(rows[dense].post.std, masked[dense].std())
    assert not close(rows[dense].post.std, unmasked[dense].std(), rtol=0.05)

FACTORY = """\
from transformers import GPT2Config, GPT2LMHeadModel


def make():
    config = GPT2Config(n_layer={layers}, n_embd={dim}, n_head=2, vocab_size={vocab},
                        n_positions={length}, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()
"""


C_ATTN = "transformer.h.0.attn.c_attn"


def test_gpt2_through_the_cli_under_its_own_init_and_kaiming(cli, tmp_path):
    factory = tmp_path / "gpt.py"
    factory.write_text(FACTORY.format(layers=LAYERS, dim=DIM, vocab=VOCAB, length=LENGTH))
    config = tmp_path / "tokens.yaml"
    config.write_text(f"data: {{source: tokens, vocab: {VOCAB}, length: {LENGTH}, "
                      f"batch_size: {BATCH}}}\nseed: 5\n")
    out = tmp_path / "report.json"
    cli("run", str(config), "--model", f"{factory}:make", "-i", "keep,kaiming", "-f", "json",
        "-o", str(out))
    report = actstat.read_report(out)
    keep, kaiming = report.runs
    assert (keep.init, kaiming.init) == ("keep", "kaiming")
    assert json.loads(out.read_text())["config"]["seed"] == 5

    # keep: the factory's model as it made it, torch's generator seeded with the seed
    torch.manual_seed(5)
    spec = spec_from_file_location("gpt_factory", factory)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    made = module.make()

    fans = {f"transformer.h.{i}.{layer}": f for i in range(LAYERS)
            for layer, f in GPT2_FANS.items()}
    # an Embedding's fan-in as torch.nn.init counts it: weight.size(1), the embedding width
    fans |= {"transformer.wte": (DIM, DIM), "transformer.wpe": (DIM, DIM),
             "lm_head": (DIM, VOCAB)}
    for run in (keep, kaiming):
        rows = {row.name: row for row in run.layers}
        assert {name: (rows[name].fan_in, rows[name].fan_out) for name in fans} == fans
        for name, (fan_in, _) in fans.items():
            if run is keep:
                weight = made.get_submodule(name).weight.detach().double().numpy()
                assert close(weight_std(rows[name]), weight.std(), rtol=1e-4), name
            else:  # kaiming, gain √2 (a user model's `auto`): std √(2 / fan_in)
                assert weight_std(rows[name]) == pytest.approx(math.sqrt(2 / fan_in),
                                                               rel=0.1), name
        # c_attn reads ln_1's output, whose DIM features have mean 0 and variance 1 on every
        # token: its output's std is about std(W) · √DIM (biases 0 in both runs)
        projection = rows[C_ATTN]
        assert projection.post.std == pytest.approx(weight_std(projection) * math.sqrt(DIM),
                                                    rel=0.1)
    ratio = row(kaiming, C_ATTN).post.std / row(keep, C_ATTN).post.std
    assert ratio == pytest.approx(math.sqrt(2 / DIM) / INIT_STD, rel=0.15)


def row(run, name: str):
    return next(layer for layer in run.layers if layer.name == name)
