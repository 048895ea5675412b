"""μP's table (actstat/parametrisation.py) against Tensor Programs V's Table 3, entry by entry,
and the model and optimiser it makes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actstat.model import ReadoutLinear, build_mlp, stack_mlps
from actstat.parametrisation import (
    MUP,
    SP,
    TABLE_3,
    apply,
    kind_of,
    kinds,
    learning_rates,
    param_groups,
    shapes,
)

# Table 3's columns, by which of the parameter's fans grow with width
GROWS = {"input": (False, True), "output": (True, False), "hidden": (True, True)}
# the published entries, written out by hand from the paper (μP; SP in its parentheses):
# init variance, SGD learning rate, Adam learning rate, as powers of (fan_in, fan_out)
PUBLISHED = {
    ("mup", "input"): ((-1, 0), (0, 1), (0, 0)),
    ("mup", "output"): ((-2, 0), (-1, 0), (-1, 0)),
    ("mup", "hidden"): ((-1, 0), (0, 0), (-1, 0)),
    ("sp", "input"): ((-1, 0), (0, 0), (0, 0)),
    ("sp", "output"): ((-1, 0), (0, 0), (0, 0)),
    ("sp", "hidden"): ((-1, 0), (0, 0), (0, 0)),
}


@pytest.mark.parametrize(("param", "kind"), sorted(PUBLISHED))
def test_table_3_is_written_as_published(param, kind):
    entry = TABLE_3[param][kind]
    assert (entry["init_var"], entry["sgd_lr"], entry["adam_lr"]) == PUBLISHED[(param, kind)]


def width_power(powers: tuple[int, int], kind: str) -> int:
    """fan_in**p × fan_out**q as a power of the width: only the fans that grow count."""
    grows_in, grows_out = GROWS[kind]
    return powers[0] * grows_in + powers[1] * grows_out


@pytest.mark.parametrize("kind", ["input", "output", "hidden"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_mup_package_form_is_table_3(kind, optimizer):
    """A multiplier m on a weight w is Table 3's θ = m·w: Adam's step on θ is m × w's (Adam's
    step ignores the gradient's scale), SGD's m² × w's (m on the gradient, m on the step); so
    each kind's learning rate in the package's form, times m or m², is the table's, as a
    power of the width."""
    rule = MUP[kind]
    got = (rule.multiplier + rule.adam_lr if optimizer == "adam"
           else 2 * rule.multiplier + rule.sgd_lr)
    column = "adam_lr" if optimizer == "adam" else "sgd_lr"
    assert got == width_power(TABLE_3["mup"][kind][column], kind)
    sp = SP[kind]
    assert (sp.multiplier, sp.sgd_lr, sp.adam_lr, sp.zero_init) == (0, 0, 0, False)


@pytest.mark.parametrize("kind", ["input", "hidden"])
def test_input_and_hidden_weights_keep_sps_init(kind):
    """Table 3's 1/fan_in init for input and hidden weights is SP's own (the scheme's init)."""
    assert MUP[kind].multiplier == 0 and not MUP[kind].zero_init
    assert width_power(TABLE_3["mup"][kind]["init_var"], kind) == width_power(
        TABLE_3["sp"][kind]["init_var"], kind)


def test_the_readout_starts_at_zero():
    """Table 3's output init variance 1/fan_in² (a multiplier 1/r on an SP-sized weight would
    give 1/fan_in³): the package's readout_zero_init, the limit of any variance that shrinks."""
    assert MUP["output"].zero_init and MUP["output"].multiplier == -1


@pytest.mark.parametrize(("small", "large", "kind"), [
    ((64, 784), (128, 784), "input"), ((64, 64), (128, 128), "hidden"),
    ((10, 64), (10, 128), "output"), ((64,), (128,), "vector"), ((10,), (10,), "fixed"),
    ((), (), "fixed")])
def test_a_parameters_kind_is_which_dimensions_grow(small, large, kind):
    assert kind_of(small, large) == kind


def mlp(width: int) -> nn.Sequential:
    from actstat.activations import make_activation

    model = build_mlp(in_features=784, widths=[width, width], num_classes=10, bias=True,
                      activation=make_activation("relu", {}))
    for name, p in list(model.named_parameters()):
        module, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(module), leaf, nn.Parameter(torch.ones(p.shape)))
    return model


def test_mup_at_four_times_the_base_width_entry_by_entry():
    """Width 256 over base 64 (r = 4), Adam and SGD at lr 0.1: every parameter's learning rate,
    the readout's multiplier and its zero start."""
    by_name = kinds(shapes(mlp(64)), shapes(mlp(128)))
    assert by_name == {"0.weight": "input", "0.bias": "vector", "2.weight": "hidden",
                       "2.bias": "vector", "4.weight": "output", "4.bias": "fixed"}
    order = list(by_name.values())
    assert learning_rates("mup", "adam", order, 0.1, 4.0) == pytest.approx(
        [0.1, 0.1, 0.025, 0.1, 0.1, 0.1])
    assert learning_rates("mup", "sgd", order, 0.1, 4.0) == pytest.approx(
        [0.4, 0.4, 0.1, 0.4, 0.4, 0.1])
    assert learning_rates("sp", "adam", order, 0.1, 4.0) == [0.1] * 6
    model = mlp(256)
    apply(model, "mup", by_name, 4.0)
    head = model[4]
    assert isinstance(head, ReadoutLinear) and head.multiplier == 0.25
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    assert torch.all(model[2].weight == 1)  # the hidden layer's init is left alone
    untouched = mlp(256)
    apply(untouched, "sp", by_name, 4.0)
    assert type(untouched[4]) is nn.Linear


def test_the_readout_multiplies_its_input_not_its_bias():
    head = ReadoutLinear(4, 2, bias=True, multiplier=0.5)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(3.0)
    assert head(torch.ones(1, 4)).tolist() == [[5.0, 5.0]]  # 4 × 0.5 + 3


def test_a_stacked_readout_keeps_its_multiplier():
    models = [mlp(8), mlp(8)]
    for model in models:
        apply(model, "mup", kinds(shapes(mlp(4)), shapes(mlp(16))), 2.0)
        with torch.no_grad():
            model[4].weight.normal_()
    x = torch.randn(5, 784)
    stacked = stack_mlps(models)
    assert stacked[4].multiplier == 0.5
    for k, model in enumerate(models):
        # (a batched matmul sums in its own order: float32 rounding apart)
        torch.testing.assert_close(stacked(x)[k], model(x), rtol=1e-5, atol=1e-4)


def test_param_groups_pair_each_rate_with_its_parameters():
    params = [nn.Parameter(torch.zeros(1)) for _ in range(4)]
    groups = param_groups(params, [0.1, 0.025, 0.1, 0.4])
    assert [(g["lr"], [id(p) for p in g["params"]]) for g in groups] == [
        (0.1, [id(params[0]), id(params[2])]), (0.025, [id(params[1])]), (0.4, [id(params[3])])]
