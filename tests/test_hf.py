"""Models by name: `--model hf:gpt2` and the like, built offline from `transformers`' configs
and their own init (actstat/hf.py), through every command. Tiny sizes throughout (hidden 32,
2 layers, vocabulary 100); the numbers are checked against the library's own model built
independently here, its own loss and plain forward hooks."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
if not transformers.utils.is_torch_available():  # transformers 5 needs torch >= 2.6
    pytest.skip(f"transformers {transformers.__version__} cannot use torch {torch.__version__}",
                allow_module_level=True)

# importing transformers and building models take seconds
pytestmark = pytest.mark.slow

VOCAB, POSITIONS, DIM, LAYERS = 100, 24, 32, 2
GPT2 = {"n_layer": LAYERS, "n_embd": DIM, "n_head": 2, "vocab_size": VOCAB,
        "n_positions": POSITIONS}
BERT = {"num_hidden_layers": LAYERS, "hidden_size": DIM, "num_attention_heads": 2,
        "intermediate_size": 2 * DIM, "vocab_size": VOCAB, "max_position_embeddings": POSITIONS}
VIT = {"num_hidden_layers": LAYERS, "hidden_size": DIM, "num_attention_heads": 2,
       "intermediate_size": 2 * DIM, "image_size": 16, "patch_size": 8, "num_channels": 3}


def model_args(kwargs: dict) -> list[str]:
    return [word for key, value in kwargs.items()
            for word in ("--model-arg", f"{key}={json.dumps(value)}")]


def run_json(cli, *args: str) -> dict:
    return json.loads(cli("run", *args, "--device", "cpu", "-f", "json", "-q").stdout)


def weight_std(row: dict) -> float:
    """std(W) of a weight row, from what the report holds: std(dL/dW) / (grad:data)."""
    return row["grad"]["weight_std"] / row["grad"]["grad_to_data"]


def test_gpt2_by_name_is_the_library_model_with_its_own_init(cli):
    report = run_json(cli, "--model", "hf:gpt2", *model_args(GPT2), "--seed", "3")
    run = report["runs"][0]
    assert run["scheme"] == "hf:gpt2 + keep"
    # token ids from the model's whole vocabulary, as many per sample as its context takes
    data = report["config"]["data"]
    assert (data["source"], data["vocab"], data["length"]) == ("tokens", VOCAB, POSITIONS)
    assert report["input"]["shape"] == [POSITIONS]

    # the same model, built here: GPT2Config's defaults under the keyword arguments, its own
    # _init_weights drawn with torch's generator seeded with the seed
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()
    ids = torch.randint(VOCAB, (data["batch_size"], POSITIONS),
                        generator=torch.Generator().manual_seed(3))
    kept = {}
    blocks = [f"transformer.h.{i}" for i in range(LAYERS)]
    handles = [model.get_submodule(name).register_forward_hook(
        lambda m, a, out, name=name: kept.setdefault(name, out[0] if isinstance(out, tuple)
                                                     else out)) for name in blocks]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)  # the library's own next-token loss
    for handle in handles:
        handle.remove()
    rows = {row["name"]: row for row in run["layers"]}
    for name in blocks:
        want = kept[name].double().numpy()
        assert rows[name]["post"]["std"] == pytest.approx(want.std(), rel=1e-5), name
    wte = model.transformer.wte.weight.detach().double().numpy()
    assert rows["transformer.wte"]["post"]["std"] == pytest.approx(wte[ids.numpy()].std(),
                                                                   rel=1e-5)
    # a causal LM's loss on token ids is next-token cross-entropy, what labels=input_ids gives
    assert run["loss"] == pytest.approx(out.loss.item(), rel=1e-4)
    assert run["loss"] == pytest.approx(math.log(VOCAB), rel=0.05)  # N(0, 0.02²) logits: chance
    for layer in ("attn.c_attn", "mlp.c_fc"):
        assert weight_std(rows[f"transformer.h.0.{layer}"]) == pytest.approx(0.02, rel=0.1)


def test_yaml_kwargs_are_the_model_args(cli, tmp_path):
    config = tmp_path / "gpt.yaml"
    config.write_text(textwrap.dedent(f"""\
        model:
          factory: hf:gpt2
          kwargs: {json.dumps(GPT2)}
        """))
    from_yaml = run_json(cli, str(config))
    from_options = run_json(cli, "--model", "hf:gpt2", *model_args(GPT2))
    assert from_yaml["runs"][0]["layers"] == from_options["runs"][0]["layers"]
    # an option on top of the file's keywords changes that one key and keeps the rest
    deeper = run_json(cli, str(config), "--model-arg", "n_layer=3")
    assert deeper["config"]["model"]["kwargs"] == {**GPT2, "n_layer": 3}
    assert "transformer.h.2" in {row["name"] for row in deeper["runs"][0]["layers"]}


def test_compare_the_library_init_with_the_classics_on_bert(cli):
    """`compare --init keep,default,kaiming,xavier`: the library's N(0, 0.02²) against torch's
    default (kaiming_uniform a=√5: std 1/√(3 fan_in)), Kaiming (gain √2: √(2/fan_in)) and Xavier
    (√(2/(fan_in + fan_out))), on every one of BERT's Linear layers."""
    out = cli("compare", "--model", "hf:bert", *model_args(BERT), "--init",
              "keep,default,kaiming,xavier", "--device", "cpu", "-f", "json", "-q").stdout
    runs = {run["init"]: run for run in json.loads(out)["runs"]}
    assert list(runs) == ["keep", "default", "kaiming", "xavier"]
    expected = {"keep": lambda i, o: 0.02, "default": lambda i, o: 1 / math.sqrt(3 * i),
                "kaiming": lambda i, o: math.sqrt(2 / i),
                "xavier": lambda i, o: math.sqrt(2 / (i + o))}
    checked = 0
    for init, run in runs.items():
        for row in run["layers"]:
            if row["kind"] != "weight" or not row["module"].startswith("Linear"):
                continue
            fan_in, fan_out = row["fan_in"], row["fan_out"]
            assert weight_std(row) == pytest.approx(expected[init](fan_in, fan_out), rel=0.15), \
                (init, row["name"])
            checked += 1
    assert checked >= 4 * 6 * LAYERS  # query, key, value, output, intermediate, output: per layer


def test_vit_gets_images_of_its_configured_size_and_its_classes(cli):
    report = run_json(cli, "--model", "hf:vit", *model_args(VIT), "--model-arg", "num_labels=5")
    assert report["input"]["shape"] == [3, 16, 16]
    assert report["config"]["data"]["source"] == "gaussian"
    assert report["config"]["model"]["num_classes"] == 5  # its classifier's labels are drawn
    run = report["runs"][0]
    rows = {row["name"]: row for row in run["layers"]}
    assert rows["classifier"]["fan_out"] == 5
    # cross-entropy against labels drawn in [0, 5), not the output's sum: about ln 5 at init
    assert run["loss"] == pytest.approx(math.log(5), rel=0.1)


def test_resnet_by_name_runs_in_training_mode(cli):
    """A model with batch norm is handed over in training mode: at init its running statistics
    are 0 and 1, so only the batch's own normalise."""
    from actstat.hf import build

    resnet = {"depths": [1, 1], "hidden_sizes": [8, 16], "embedding_size": 8}
    assert build("hf:resnet", resnet).training
    assert not build("hf:gpt2", GPT2).training  # dropout off, as from_pretrained hands it over
    report = run_json(cli, "--model", "hf:resnet", *model_args(resnet), "--batch-size", "2")
    assert report["input"]["shape"] == [3, 224, 224]  # ResNetConfig has no image_size
    # each BatchNorm's output: its own batch's statistics, std 1 (γ = 1, β = 0 at init); in eval
    # mode it would be its input, the convolution's output, scaled by nothing
    norms = [(row["pre"] or row["post"])["std"] for row in report["runs"][0]["layers"]
             if row["kind"] == "norm"]
    assert len(norms) == 8 and norms == pytest.approx([1.0] * 8, rel=1e-3)


def test_a_class_by_name_and_its_config(cli):
    report = run_json(cli, "--model", "hf:BertForSequenceClassification", *model_args(BERT),
                      "--model-arg", "num_labels=3")
    rows = {row["name"]: row for row in report["runs"][0]["layers"]}
    assert rows["classifier"]["fan_out"] == 3
    assert report["config"]["model"]["num_classes"] == 3
    # one label per sample among its 3, drawn with the seed: cross-entropy, about ln 3 at init
    assert report["runs"][0]["loss"] == pytest.approx(math.log(3), rel=0.1)


def test_train_a_causal_lm_below_chance(cli):
    """`actstat train` on GPT-2: next-token cross-entropy on the token batch, from chance level,
    ln(vocabulary), to below it."""
    out = cli("train", "--model", "hf:gpt2", *model_args(GPT2), "--steps", "40", "--every", "10",
              "--optimizer", "adam", "--lr", "0.003", "--device", "cpu", "-f", "json",
              "-q").stdout
    trajectory = json.loads(out)["runs"][0]["trajectory"]
    assert trajectory["chance_loss"] == pytest.approx(math.log(VOCAB))
    assert trajectory["loss"][0] == pytest.approx(math.log(VOCAB), rel=0.05)
    assert trajectory["loss"][-1] < 0.8 * math.log(VOCAB)
    assert trajectory["trained"] is True


def test_train_an_image_classifier_and_a_masked_lm(cli):
    for model, kwargs in (("hf:vit", VIT), ("hf:bert", BERT)):
        out = cli("train", "--model", model, *model_args(kwargs), "--steps", "3", "--every", "1",
                  "--device", "cpu", "-f", "json", "-q").stdout
        trajectory = json.loads(out)["runs"][0]["trajectory"]
        assert len(trajectory["loss"]) == 3 and all(np.isfinite(trajectory["loss"])), model


def test_layers_by_a_transformers_class(cli):
    report = run_json(cli, "--model", "hf:gpt2", *model_args(GPT2), "--layers", "GPT2Block")
    rows = report["runs"][0]["layers"]
    assert [(row["name"], row["module"]) for row in rows] == [
        (f"transformer.h.{i}", "GPT2Block") for i in range(LAYERS)]


def test_baseline_then_check(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli("baseline", "--model", "hf:gpt2", *model_args(GPT2), "--device", "cpu", "-o", "b.json",
        "-q")
    checked = cli("check", "b.json")
    assert "passed" in checked.stdout
    # another init of the same model drifts
    cli("check", "b.json", "--init", "kaiming", code=1)


def test_the_python_api_on_a_model_by_name():
    import actstat
    from actstat.hf import build

    torch.manual_seed(0)
    model = build("hf:gpt2", GPT2)
    ids = torch.randint(VOCAB, (4, 8), generator=torch.Generator().manual_seed(1))
    report = actstat.profile(model, {"input_ids": ids}, ids, output="logits")
    assert {"transformer.h.0", "lm_head"} <= {row.name for row in report.runs[0].layers}


# ---------------------------------------------------------------------------------------------
# mistakes: one line each, exit 2


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_an_unknown_model_type_names_the_closest(cli):
    line = one_line(cli("run", "--model", "hf:gtp2", code=2))
    assert "no model type or class 'gtp2'" in line and "hf:gpt2" in line
    line = one_line(cli("run", "--model", "hf:GPT2LMHedModel", code=2))
    assert "did you mean hf:GPT2LMHeadModel" in line
    line = one_line(cli("run", "--model", "hf:openai-community/gpt2", code=2))
    assert "names a Hub repository, and actstat downloads nothing" in line


def test_an_unknown_config_key_names_the_closest(cli):
    line = one_line(cli("run", "--model", "hf:gpt2", "--model-arg", "n_layers=2", code=2))
    assert "GPT2Config has no key 'n_layers'" in line and "did you mean 'n_layer'?" in line


def test_a_bad_config_value_is_one_line(cli):
    line = one_line(cli("run", "--model", "hf:gpt2", *model_args({**GPT2, "n_head": 3}), code=2))
    assert "building GPT2LMHeadModel raised ValueError" in line and "divisible" in line


def test_ids_outside_the_vocabulary_name_the_option(cli):
    line = one_line(cli("run", "--model", "hf:gpt2", *model_args(GPT2), "--vocab", "1000",
                        code=2))
    assert "--vocab is 1000 but hf:gpt2 has 100 tokens" in line and "--vocab 100" in line
    line = one_line(cli("run", "--model", "hf:gpt2", *model_args(GPT2), "--length", "64",
                        code=2))
    assert f"takes at most {POSITIONS} tokens (n_positions)" in line and "--length" in line


def test_a_factory_model_past_its_vocabulary_names_the_option(cli, tmp_path, monkeypatch):
    """docs/models.md's factory: GPT-2 with 100 tokens and 1024 positions on the default
    vocabulary of 1000 (its position embedding is the larger one)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt.py").write_text(textwrap.dedent("""\
        from transformers import GPT2Config, GPT2LMHeadModel

        def make(layers: int = 2):
            return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=32, n_head=2,
                                              vocab_size=100)).eval()
        """))
    line = one_line(cli("run", "--model", "gpt.py:make", "--data", "tokens", code=2))
    assert "data.vocab is 1000" in line and "--vocab 100" in line
    cli("run", "--model", "gpt.py:make", "--data", "tokens", "--vocab", "100", "--batch-size",
        "4", "-q")
