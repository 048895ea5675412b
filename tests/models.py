"""A small zoo of real network shapes for tests/test_capture.py, each with `trace`: a plain
forward, written out by hand with functional ops (no in-place op, no hook, no actstat code), that
keeps every intermediate the capture should measure, under the name and kind it should get, in
the order it should come."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Ref:
    name: str
    kind: str
    tensor: torch.Tensor
    unit: int = -1  # the dimension whose entries are units (dead counts them)
    saturated: Callable[[np.ndarray], np.ndarray] | None = None  # the bounded activation's rule


def keep(t: torch.Tensor) -> torch.Tensor:
    """`t`, with its gradient kept after backward when it has one."""
    if t.requires_grad:
        t.retain_grad()
    return t


# -- a residual MLP: the block outputs are the residual stream -------------------------------

class MLPBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class ResidualMLP(nn.Module):
    def __init__(self, inputs: int = 20, width: int = 32, depth: int = 3, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(MLPBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def trace(self, x):
        refs = []
        h = keep(F.linear(x, self.inp.weight, self.inp.bias))
        refs.append(Ref("inp", "weight", h))
        for i, block in enumerate(self.blocks):
            a = keep(F.linear(h, block.fc1.weight, block.fc1.bias))
            r = keep(torch.relu(a))
            b = keep(F.linear(r, block.fc2.weight, block.fc2.bias))
            h = keep(h + b)
            refs += [Ref(f"blocks.{i}.fc1", "weight", a), Ref(f"blocks.{i}.act", "activation", r),
                     Ref(f"blocks.{i}.fc2", "weight", b), Ref(f"blocks.{i}", "block", h)]
        out = keep(F.linear(h, self.head.weight, self.head.bias))
        refs.append(Ref("head", "weight", out))
        return refs, out


# -- a CNN: Conv2d + BatchNorm2d + ReLU + pooling, on (N, 1, 28, 28) ---------------------------

class SmallCNN(nn.Module):
    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        c = channels
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = (nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c),
                                            nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * c * 7 * 7, classes)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))

    def trace(self, x):
        refs = []  # the data itself is no record; the pooled maps conv2 gets are
        for i, (conv, bn) in enumerate([(self.conv1, self.bn1), (self.conv2, self.bn2)], start=1):
            if i == 2:
                refs.append(Ref("conv2:input", "input", x, unit=1))
            c = keep(F.conv2d(x, conv.weight, conv.bias, padding=1))
            b = keep(_batch_norm(c, bn))
            r = keep(torch.relu(b))
            refs += [Ref(f"conv{i}", "weight", c, 1), Ref(f"bn{i}", "norm", b, 1),
                     Ref(f"relu{i}", "activation", r, 1)]
            x = keep(F.max_pool2d(r, 2))
        flat = keep(torch.flatten(x, 1))
        out = keep(F.linear(flat, self.fc.weight, self.fc.bias))
        refs += [Ref("fc:input", "input", flat), Ref("fc", "weight", out)]
        return refs, out


def _batch_norm(x, bn: nn.BatchNorm2d):
    """BatchNorm2d's arithmetic (torch's functional op, so half precision rounds alike): batch
    statistics in train mode, running ones in eval mode; the running statistics not updated."""
    if bn.training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


# -- a pre-norm transformer on integer tokens -------------------------------------------------

class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def trace(self, tokens):
        x = keep(F.embedding(tokens, self.embed.weight))
        refs = [Ref("embed", "weight", x)]
        for i, block in enumerate(self.blocks):
            h = keep(_layer_norm(x, block.ln1))
            a = keep(_attention(h, block.attn))
            x = x + a
            n = keep(_layer_norm(x, block.ln2))
            f = keep(F.linear(n, block.fc1.weight, block.fc1.bias))
            g = keep(F.gelu(f))
            o = keep(F.linear(g, block.fc2.weight, block.fc2.bias))
            x = keep(x + o)
            p = f"blocks.{i}"
            # (nn.MultiheadAttention is an attention module of its own, not ln1's activation)
            refs += [Ref(f"{p}.ln1", "norm", h), Ref(f"{p}.attn", "attention", a),
                     Ref(f"{p}.ln2", "norm", n), Ref(f"{p}.fc1", "weight", f),
                     Ref(f"{p}.act", "activation", g), Ref(f"{p}.fc2", "weight", o),
                     Ref(p, "block", x)]
        n = keep(_layer_norm(x, self.ln_f))
        out = keep(F.linear(n, self.head.weight, self.head.bias))
        refs += [Ref("ln_f", "norm", n), Ref("head", "weight", out)]
        return refs, out


def _layer_norm(x, ln: nn.LayerNorm):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _attention(x, attn: nn.MultiheadAttention):
    """Multi-head self-attention from its projections, as the paper writes it."""
    n, t, d = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(n, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(n, t, d)
    return F.linear(y, attn.out_proj.weight, attn.out_proj.bias)


# -- F.relu in forward, and one activation module called twice ------------------------------

class FunctionalMLP(nn.Module):
    def __init__(self, inputs: int = 12, width: int = 24, classes: int = 5):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(inputs, width), nn.Linear(width, width),
                                        nn.Linear(width, classes))

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def trace(self, x):
        refs = []
        for name in ("fc1", "fc2", "fc3"):
            layer = getattr(self, name)
            if name != "fc1":
                x = keep(torch.relu(x))
                refs.append(Ref(f"{name}:input", "input", x))
            x = keep(F.linear(x, layer.weight, layer.bias))
            refs.append(Ref(name, "weight", x))
        return refs, x


def tanh_saturated(a: np.ndarray) -> np.ndarray:
    """Karpathy's rule (makemore part 3): |t| > 0.97 (the capture counts the edge too)."""
    return np.abs(a) >= 0.97


class SharedTanh(nn.Module):
    """One nn.Tanh module used after both hidden layers: two calls, two records."""

    def __init__(self, inputs: int = 12, width: int = 24, classes: int = 5):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(inputs, width), nn.Linear(width, width),
                                        nn.Linear(width, classes))
        self.act = nn.Tanh()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    def trace(self, x):
        refs = []
        for name, act in (("fc1", "act"), ("fc2", "act#2")):
            layer = getattr(self, name)
            x = keep(F.linear(x, layer.weight, layer.bias))
            refs.append(Ref(name, "weight", x))
            x = keep(torch.tanh(x))
            refs.append(Ref(act, "activation", x, saturated=tanh_saturated))
        out = keep(F.linear(x, self.fc3.weight, self.fc3.bias))
        refs.append(Ref("fc3", "weight", out))
        return refs, out


# -- torchvision-ResNet style: nn.ReLU(inplace=True) after convolutions -----------------------

class BasicBlock(nn.Module):
    """torchvision's BasicBlock: `out += identity` and one in-place ReLU module called twice."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class InplaceResNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.layer = nn.Sequential(BasicBlock(c), BasicBlock(c))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.layer(self.relu(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))

    def trace(self, x):
        refs = []
        s = keep(F.conv2d(x, self.stem.weight, self.stem.bias, padding=1))
        x = keep(torch.relu(s))
        refs += [Ref("stem", "weight", s, 1), Ref("relu", "activation", x, 1)]
        for i, block in enumerate(self.layer):
            p = f"layer.{i}"
            c1 = keep(F.conv2d(x, block.conv1.weight, padding=1))
            b1 = keep(_batch_norm(c1, block.bn1))
            r1 = keep(torch.relu(b1))
            c2 = keep(F.conv2d(r1, block.conv2.weight, padding=1))
            b2 = keep(_batch_norm(c2, block.bn2))
            x = keep(torch.relu(b2 + x))
            # the second ReLU is called after `out += identity` changed bn2's output in place:
            # not bn2's activation; its output is the block's
            refs += [Ref(f"{p}.conv1", "weight", c1, 1), Ref(f"{p}.bn1", "norm", b1, 1),
                     Ref(f"{p}.relu", "activation", r1, 1), Ref(f"{p}.conv2", "weight", c2, 1),
                     Ref(f"{p}.bn2", "norm", b2, 1), Ref(p, "block", x, 1)]
        flat = keep(torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1))
        out = keep(F.linear(flat, self.fc.weight, self.fc.bias))
        refs += [Ref("fc:input", "input", flat), Ref("fc", "weight", out)]
        return refs, out


# -- Hugging Face style: blocks return a tuple -----------------------------------------------

class TupleBlock(nn.Module):
    """Returns (hidden states, an auxiliary tensor), as Hugging Face layers do."""

    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.act(self.dense(x))
        return x + h, h.detach().abs().mean(dim=-1)


class TupleModel(nn.Module):
    def __init__(self, inputs: int = 16, width: int = 16, depth: int = 2, classes: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(TupleBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        aux = []
        for layer in self.layers:
            x, a = layer(x)
            aux.append(a)
        return {"logits": self.head(x), "aux": torch.stack(aux)}

    def trace(self, x):
        refs = []
        for i, layer in enumerate(self.layers):
            d = keep(F.linear(x, layer.dense.weight, layer.dense.bias))
            h = keep(F.silu(d))
            x = keep(x + h)
            refs += [Ref(f"layers.{i}.dense", "weight", d), Ref(f"layers.{i}.act", "activation", h),
                     Ref(f"layers.{i}", "block", x)]
        out = keep(F.linear(x, self.head.weight, self.head.bias))
        refs.append(Ref("head", "weight", out))
        return refs, out


# -- GPT-2 style: Hugging Face's Conv1D, a linear layer stored (in, out) ---------------------

class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D written out (so no test needs transformers): `nf`
    outputs, weight (in, out), x @ W + b. The capture knows it by its class name and `nf`."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        flat = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return flat.reshape(*x.shape[:-1], self.nf)


class GPTMLPBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.c_fc = Conv1D(4 * dim, dim)
        self.act = nn.GELU()
        self.c_proj = Conv1D(dim, 4 * dim)

    def forward(self, x):
        return x + self.c_proj(self.act(self.c_fc(self.ln(x))))


class TransposedLinearNet(nn.Module):
    """Conv1D in, two pre-norm residual MLP blocks of Conv1D, a Conv1D head."""

    def __init__(self, inputs: int = 20, dim: int = 16, depth: int = 2, classes: int = 10):
        super().__init__()
        self.c_in = Conv1D(dim, inputs)
        self.blocks = nn.ModuleList(GPTMLPBlock(dim) for _ in range(depth))
        self.head = Conv1D(classes, dim)

    def forward(self, x):
        x = self.c_in(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def trace(self, x):
        h = keep(x @ self.c_in.weight + self.c_in.bias)
        refs = [Ref("c_in", "weight", h)]
        for i, block in enumerate(self.blocks):
            n = keep(_layer_norm(h, block.ln))
            f = keep(n @ block.c_fc.weight + block.c_fc.bias)
            g = keep(F.gelu(f))
            o = keep(g @ block.c_proj.weight + block.c_proj.bias)
            h = keep(h + o)
            p = f"blocks.{i}"
            refs += [Ref(f"{p}.ln", "norm", n), Ref(f"{p}.c_fc", "weight", f),
                     Ref(f"{p}.act", "activation", g), Ref(f"{p}.c_proj", "weight", o),
                     Ref(p, "block", h)]
        out = keep(h @ self.head.weight + self.head.bias)
        refs.append(Ref("head", "weight", out))
        return refs, out


def mnist_images(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The first n images of the packaged MNIST sample as (n, 1, 28, 28), scaled to [0, 1]."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "actstat" / "assets" / "mnist_5k.npz"
    with np.load(path) as data:
        images = data["images"][:n].astype(np.float32) / 255.0
    return torch.from_numpy(images).reshape(n, 1, 28, 28).to(dtype)


def gaussian(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded N(0, 1) inputs of `shape`."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def labels(n: int, classes: int, seed: int = 1) -> torch.Tensor:
    """Seeded class ids for n samples."""
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))
