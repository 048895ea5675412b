"""Model: the MLP (plain or residual blocks, with or without norm layers) that a Config
describes, initialised by a scheme, on a device."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from actstat.activations import Activation
from actstat.errors import ConfigError
from actstat.inits import BiasInit, Role, StructuralInit, WeightInit
from actstat.records import ByDesign


def build_mlp(*, in_features: int, widths: list[int], num_classes: int, bias: bool,
              activation: Activation) -> nn.Sequential:
    """Linear -> activation, once per hidden width, then a linear head of `num_classes` logits.

    Built on the meta device: parameters get storage only when `initialise` fills them, so
    nn.Linear's own reset (a wasted pass over every weight) never runs.
    """
    layers: list[nn.Module] = []
    fan_in = in_features
    for width in widths:
        layers += [nn.Linear(fan_in, width, bias=bias, device="meta"), activation.module()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes, bias=bias, device="meta"))
    return nn.Sequential(*layers)


def hidden_linears(model: nn.Sequential) -> list[nn.Linear]:
    """`build_mlp`'s hidden layers: every Linear but the head."""
    return [m for m in model if isinstance(m, nn.Linear)][:-1]


def make_norm(kind: str, width: int) -> nn.Module:
    """A norm layer over `width` features: weight 1, bias 0 (`initialise` resets it)."""
    if kind == "batchnorm":
        return nn.BatchNorm1d(width)
    if kind == "layernorm":
        return nn.LayerNorm(width)
    if kind == "rmsnorm":
        rms = getattr(nn, "RMSNorm", None)  # torch 2.4+; our floor is 2.2
        if rms is None:
            raise ConfigError(f"model.norm rmsnorm needs torch 2.4 or later (this is "
                              f"{torch.__version__}): upgrade torch, or use layernorm")
        return rms(width)
    raise ConfigError(f"model.norm: unknown norm '{kind}' (none, batchnorm, layernorm, rmsnorm)")


NORMS = (nn.BatchNorm1d, nn.LayerNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


class ResidualBlock(nn.Module):
    """x + α·branch(x), the branch `Linear -> activation` `depth` times at one width (fc1, act1,
    ..., so that a row reads blocks.3.branch.fc1). norm "pre" normalises the branch's input
    (the skip carries x untouched); "post" normalises the sum. α (`multiplier`) is a learnable
    scalar, absent unless configured."""

    def __init__(self, width: int, *, depth: int, bias: bool, activation: Activation,
                 norm: str, norm_position: str, multiplier: float | None):
        super().__init__()
        self.pre = norm_position == "pre"
        if norm != "none" and self.pre:
            self.norm = make_norm(norm, width)
        layers: dict[str, nn.Module] = {}
        for k in range(1, depth + 1):
            layers[f"fc{k}"] = nn.Linear(width, width, bias=bias, device="meta")
            layers[f"act{k}"] = activation.module()
        self.branch = nn.Sequential(OrderedDict(layers))
        self.initial_multiplier = multiplier
        if multiplier is not None:
            self.multiplier = nn.Parameter(torch.empty((), device="meta"))
        if norm != "none" and not self.pre:
            self.norm = make_norm(norm, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, "norm", None)
        out = self.branch(norm(x) if norm is not None and self.pre else x)
        if self.initial_multiplier is not None:
            out = self.multiplier * out
        y = x + out
        return norm(y) if norm is not None and not self.pre else y


class ResidualMLP(nn.Module):
    """inp (Linear in -> width) and inp_act, then `blocks`, then `head` (Linear width ->
    classes)."""

    def __init__(self, *, in_features: int, width: int, depth: int, branch_depth: int,
                 num_classes: int, bias: bool, activation: Activation, norm: str,
                 norm_position: str, multiplier: float | None):
        super().__init__()
        self.inp = nn.Linear(in_features, width, bias=bias, device="meta")
        self.inp_act = activation.module()
        self.blocks = nn.Sequential(*(
            ResidualBlock(width, depth=branch_depth, bias=bias, activation=activation, norm=norm,
                          norm_position=norm_position, multiplier=multiplier)
            for _ in range(depth)))
        self.head = nn.Linear(width, num_classes, bias=bias, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp_act(self.inp(x))))


def build_residual(*, in_features: int, width: int, depth: int, branch_depth: int,
                   num_classes: int, bias: bool, activation: Activation, norm: str = "none",
                   norm_position: str = "pre", multiplier: float | None = None) -> ResidualMLP:
    """`depth` residual blocks of `branch_depth` Linear+activation layers at one width, between
    an input layer and a linear head; Linear layers on the meta device, as `build_mlp`'s."""
    return ResidualMLP(in_features=in_features, width=width, depth=depth,
                       branch_depth=branch_depth, num_classes=num_classes, bias=bias,
                       activation=activation, norm=norm, norm_position=norm_position,
                       multiplier=multiplier)


def build_normed_mlp(*, in_features: int, widths: list[int], num_classes: int, bias: bool,
                     activation: Activation, norm: str, norm_position: str) -> nn.Sequential:
    """`build_mlp`'s layers with a norm layer in each hidden layer k: fc{k}, norm{k}, act{k}
    (pre: between the Linear and its activation) or fc{k}, act{k}, norm{k} (post), then `head`."""
    layers: dict[str, nn.Module] = {}
    fan_in = in_features
    for k, width in enumerate(widths, start=1):
        layers[f"fc{k}"] = nn.Linear(fan_in, width, bias=bias, device="meta")
        if norm_position == "pre":
            layers[f"norm{k}"] = make_norm(norm, width)
        layers[f"act{k}"] = activation.module()
        if norm_position != "pre":
            layers[f"norm{k}"] = make_norm(norm, width)
        fan_in = width
    layers["head"] = nn.Linear(fan_in, num_classes, bias=bias, device="meta")
    return nn.Sequential(OrderedDict(layers))


class ReadoutLinear(nn.Linear):
    """μP's readout (the mup package's `MuReadout`): a Linear whose input is multiplied by
    `multiplier` (base width / width: actstat/parametrisation.py) before the weight, so the
    logits' bias is not scaled. Still an nn.Linear to the engine and the inits."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, multiplier: float,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.multiplier)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, multiplier={self.multiplier:g}"


class StackedLinear(nn.Module):
    """K Linear layers of one shape side by side: weight (K, out, in), bias (K, out).

    A (batch, in) input is shared by all K (the first layer: one matmul against the K weights
    laid end to end); a (K, batch, in) input gives each its own (one batched matmul). Either way
    the output is (K, batch, out), contiguous. `stacked`: how the measurement engine knows it
    (actstat/capture.py measures each group k of its outputs and of its weight as model k's).
    `multiplier`: a ReadoutLinear's, applied to the input as it does.
    """

    stacked = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, multiplier: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.groups, self.out_features, self.in_features = weight.shape
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out, fan_in = self.weight.shape
        if self.multiplier != 1.0:
            x = x * self.multiplier
        if x.dim() == 2:
            bias = self.bias.reshape(k * out) if self.bias is not None else None
            y = F.linear(x, self.weight.reshape(k * out, fan_in), bias)  # (batch, K * out)
            return y.view(x.shape[0], k, out).transpose(0, 1).contiguous()
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


def stack_mlps(models: list[nn.Sequential]) -> nn.Sequential:
    """One model that runs K MLPs of the same shape and activation side by side: their Linear
    weights stacked (copied) into StackedLinear layers, the activation shared (it is
    elementwise). Its input is one (batch, in) batch for all K; its logits are (K, batch, classes).
    """
    layers: list[nn.Module] = []
    for same_place in zip(*(model.children() for model in models)):
        first = same_place[0]
        if isinstance(first, nn.Linear):
            bias = (torch.stack([m.bias.detach() for m in same_place])
                    if first.bias is not None else None)
            layers.append(StackedLinear(torch.stack([m.weight.detach() for m in same_place]),
                                        bias, getattr(first, "multiplier", 1.0)))
        else:
            layers.append(first)
    return nn.Sequential(*layers).eval()


def parameter_variances(model: nn.Module, linears: list[nn.Linear]) -> list[tuple[float, float]]:
    """(σ_w², σ_b²) = (fan_in · Var(W), Var(b)) of each Linear, population variances in float64,
    fetched in one copy (σ_b² is 0 without a bias)."""
    values = []
    for linear in linears:
        w = linear.weight.detach().to(torch.float64)
        values.append(w.var(correction=0) * linear.in_features)
        values.append(linear.bias.detach().to(torch.float64).var(correction=0)
                      if linear.bias is not None else torch.zeros((), dtype=torch.float64,
                                                                   device=w.device))
    host = torch.stack(values).tolist() if values else []
    return list(zip(host[0::2], host[1::2]))


def linear_roles(model: nn.Module) -> dict[nn.Linear, Role]:
    """Each Linear's `Role`: in a `ResidualMLP`, its input layer, branch layers (k of m, L
    branches) and head; in any other model, `plain`."""
    if not isinstance(model, ResidualMLP):
        return {m: Role("plain") for m in model.modules() if isinstance(m, nn.Linear)}
    blocks = list(model.blocks)
    roles = {model.inp: Role("input"), model.head: Role("head")}
    for block in blocks:
        branch = [m for m in block.branch if isinstance(m, nn.Linear)]
        for k, linear in enumerate(branch, start=1):
            roles[linear] = Role("branch", k, len(branch), len(blocks))
    return roles


def initialise(model: nn.Module, weight_init: WeightInit | StructuralInit, bias_init: BiasInit,
               *, act_gain: float, seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Fill every Linear (the head too) in module order from one CPU generator seeded with `seed`,
    then move the model: the same seed gives the same weights on every device and dtype. Norm
    layers start at weight 1, bias 0; a residual block's multiplier at its configured value.

    A `StructuralInit` (fixup, rezero, gpt2, bert) draws each Linear's weight by its `Role`
    (input, layer k of m of one of L branches, head), zeroes every bias, and sets each block's
    multiplier to its own value where it has one."""
    _materialise(model)
    g = torch.Generator().manual_seed(seed)
    structural = weight_init if isinstance(weight_init, StructuralInit) else None
    roles = linear_roles(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                if structural is not None:
                    structural.weight(module.weight, roles[module], act_gain, g)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                    continue
                weight_init(module.weight, act_gain, g)
                if module.bias is not None:
                    bias_init(module.bias, module.in_features, g)
            elif isinstance(module, NORMS):
                module.reset_parameters()  # weight 1, bias 0 (and fresh running statistics)
            elif isinstance(module, ResidualBlock) and module.initial_multiplier is not None:
                module.multiplier.fill_(start_multiplier(module, weight_init))
    return model.to(device=device, dtype=dtype).eval()


def start_multiplier(block: ResidualBlock, init: WeightInit | StructuralInit) -> float | None:
    """The value `initialise` starts a block's α at: the structural init's where it sets one,
    else the configured one (None: the block has no α)."""
    if block.initial_multiplier is None:
        return None
    if isinstance(init, StructuralInit) and init.multiplier is not None:
        return init.multiplier
    return block.initial_multiplier


def by_design(model: nn.Module, init: WeightInit | StructuralInit, activation: Activation,
              name: str) -> ByDesign | None:
    """The zeros that `init` (registered as `name`) sets on purpose in the built-in residual
    model, and the gradients they silence at step 0 (see actstat/analysis.py `ByDesign`): the
    layers of `init.zeroes`' roles, and the blocks whose α starts at 0 (rezero, or
    model.multiplier 0). A zero head silences every layer before it; a zero α its block's
    branch (and a pre norm, which feeds only the branch); a zero branch last layer the layers
    before it in its branch. Where the activation is flat at 0 (relu), a zero branch last
    layer's units are dead and pass no gradient, ever: it and its branch are `stuck`, not
    quiet. None where nothing is zero on purpose (and for any other model)."""
    if not isinstance(model, ResidualMLP):
        return None
    names = {id(m): path for path, m in model.named_modules()}
    zeroes = init.zeroes if isinstance(init, StructuralInit) else None
    zeroed = ({id(m) for m, role in linear_roles(model).items() if zeroes(role)}
              if zeroes is not None else set())
    flat = activation.dead_below is not None and activation.dead_below >= 0
    zero_weights, stuck, gates, quiet, never = set(), set(), set(), set(), set()
    gate_source = None
    if id(model.head) in zeroed:
        zero_weights.add(names[id(model.head)])
        quiet |= {path for path, m in model.named_modules() if m is not model.head and path}
    for block in model.blocks:
        # the rows behind the branch's output: a pre norm, then the branch's Linear layers
        behind = [m for m in (getattr(block, "norm", None) if block.pre else None,
                              *block.branch) if isinstance(m, (nn.Linear, *NORMS))]
        if start_multiplier(block, init) == 0:
            gates.add(names[id(block)])
            quiet |= {names[id(m)] for m in behind}
            structural_gate = isinstance(init, StructuralInit) and init.multiplier == 0
            gate_source = name if structural_gate else "model.multiplier 0"
        last = behind[-1]
        if id(last) in zeroed:
            before = {names[id(m)] for m in behind[:-1]}
            (stuck if flat else zero_weights).add(names[id(last)])
            (never if flat else quiet).update(before)
    if not (zero_weights or stuck or gates):
        return None
    return ByDesign(source=name if zeroed else gate_source or name,
                    zero_weights=frozenset(zero_weights), stuck=frozenset(stuck),
                    gates=frozenset(gates), quiet=frozenset(quiet - never - stuck),
                    activation=activation.name)


def _materialise(model: nn.Module) -> None:
    """Give every meta parameter uninitialised CPU storage of its shape. (`Module.to_empty` does
    the same but imports torch's symbolic-shapes machinery, sympy included: 0.4 s at start-up.)"""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                               requires_grad=param.requires_grad))
