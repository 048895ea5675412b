"""Training probe: a few steps of plain SGD on the batch, and how far each layer's weights moved.

It shows what the literature says about symmetry: with zeros init the hidden weights never move
(their gradient is exactly zero; only the head's bias learns), with a constant init every unit
moves by the same amount and stays identical, and with a random init units move apart. On the
built-in model with residual blocks or norm layers it shows which schemes train at depth at all
(docs/residual.md): every Linear is reported by its module name, and rezero's α by its value.
"""

from __future__ import annotations

import torch
from torch import nn

from actstat.model import ResidualBlock
from actstat.records import TrainLayer, TrainMultiplier, TrainStats, finite_or_none
from actstat.reduce import cross_entropy


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear of the built-in model, by module name, in module order: the plain MLP's
    `0, 2, ...`, a normed MLP's `fc1, ...`, a residual model's `inp, blocks.N.branch.fcK, ...`;
    the last is the head (each model builds it last)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def multipliers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each residual block's learnable α (`blocks.N.multiplier`), where the blocks have one."""
    return [(f"{name}.multiplier", m.multiplier) for name, m in model.named_modules()
            if isinstance(m, ResidualBlock) and m.initial_multiplier is not None]


def train_probe(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int,
                lr: float, symmetric: float) -> TrainStats:
    """`steps` SGD steps (no momentum, no weight decay) on the mean cross-entropy of the batch,
    every parameter trained (norm layers' scale and shift and α too), in train mode: BatchNorm
    normalises by each step's batch statistics, as training would.

    Losses are kept on the device and copied to the host once, with every other number, at the
    end. `symmetric` is the relative tolerance of `still_symmetric` (thresholds.symmetric).
    """
    *hidden, (_, head) = weight_layers(model)
    alphas = multipliers(model)
    linears = [m for _, m in hidden]
    start = {id(m): (m.weight.detach().clone(), _bias(m)) for m in [*linears, head]}
    alpha_start = [alpha.detach().clone() for _, alpha in alphas]
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    was_training = model.training
    model.train()
    losses = []
    try:
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss = cross_entropy(model(inputs), labels)
            losses.append(loss.detach())
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            losses.append(cross_entropy(model(inputs), labels))
            numbers = [torch.stack(losses).to(torch.float64)]
            for m in [*linears, head]:
                numbers.append(_movement(m, *start[id(m)], symmetric))
            for (_, alpha), begun in zip(alphas, alpha_start):
                numbers.append(torch.stack([begun, alpha.detach()]).to(torch.float64))
            host = torch.cat(numbers).tolist()
    finally:
        model.train(was_training)
        optimiser.zero_grad(set_to_none=True)
    curve, rest = host[: steps + 1], host[steps + 1:]
    per_layer = [rest[i * 4:(i + 1) * 4] for i in range(len(linears) + 1)]
    moved_alphas = rest[4 * (len(linears) + 1):]
    layers = tuple(
        TrainLayer(
            index=i,
            weight_change=finite_or_none(delta / norm) if norm > 0 else None,
            weight_delta=finite_or_none(delta),
            bias_delta=finite_or_none(bias_delta) if m.bias is not None else None,
            still_symmetric=bool(same),
            name=name,
        )
        for i, ((name, m), (delta, norm, bias_delta, same)) in enumerate(
            zip(hidden, per_layer[:-1]), start=1)
    )
    head_delta, _, head_bias_delta, _ = per_layer[-1]
    return TrainStats(steps, lr, tuple(finite_or_none(v) for v in curve), layers,
                      finite_or_none(head_delta),
                      finite_or_none(head_bias_delta) if head.bias is not None else None,
                      multipliers=tuple(
                          TrainMultiplier(name, finite_or_none(moved_alphas[2 * i]),
                                          finite_or_none(moved_alphas[2 * i + 1]))
                          for i, (name, _) in enumerate(alphas)))


def _bias(m: nn.Linear) -> torch.Tensor | None:
    return None if m.bias is None else m.bias.detach().clone()


def _movement(m: nn.Linear, w0: torch.Tensor, b0: torch.Tensor | None,
              tolerance: float) -> torch.Tensor:
    """[||W - W0||, ||W0||, ||b - b0||, still symmetric (1/0)] on the device.

    Units are still symmetric when every row of W (a unit's incoming weights) and every bias
    equals the first unit's, to `tolerance` times the largest |value|.
    """
    w = m.weight.detach()
    acc = torch.float64
    delta = torch.linalg.vector_norm((w - w0).to(acc))
    norm = torch.linalg.vector_norm(w0.to(acc))
    rows_same = (w - w[:1]).abs().amax() <= tolerance * w.abs().amax()
    if b0 is None:
        bias_delta = torch.zeros((), dtype=acc, device=w.device)
        same = rows_same
    else:
        b = m.bias.detach()
        bias_delta = torch.linalg.vector_norm((b - b0).to(acc))
        same = rows_same & ((b - b[:1]).abs().amax() <= tolerance * b.abs().amax())
    return torch.stack([delta, norm, bias_delta, same.to(acc)])
