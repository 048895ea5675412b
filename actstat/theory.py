"""Theory: the mean-field expected std of every layer, and the order/chaos phase of a scheme.

Mean field (Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep information propagation"): with i.i.d.
zero-mean weights, each pre-activation of a wide layer is Gaussian with variance q_l, and

    q_1 = σ_w,1² · E_samples[‖x‖² / n_in] + σ_b,1²         (the input's second moment)
    q_l = σ_w,l² · E_z[φ(√q_{l-1} · z)²] + σ_b,l²,   z ~ N(0, 1)

where σ_w² = fan_in · Var(W) and σ_b² = Var(b) are read off each layer's actual initialised
parameters (so the theory follows any init). The expected pre std is √q_l, the expected post
mean and std those of φ(√q_l z).

Phase: χ₁ = σ_w² · E_z[φ'(√q* z)²] at the fixed point q* of the length map, for the deep layers'
σ_w², σ_b² (the last hidden layer's). χ₁ < 1 is ordered (gradients vanish, inputs collapse onto
each other), > 1 chaotic (gradients explode); within CRITICAL_BAND of 1 critical. Where the
map has no finite fixed point (q grows without bound, e.g. relu with σ_w² > 2), q* is None and
χ₁ is taken at the last layer's q.

Numerics: closed forms where the activation has them (relu, leaky_relu, general_relu without a
clamp, identity); otherwise Gauss–Hermite quadrature for smooth φ at moderate q, and composite
Gauss–Legendre split at φ's kinks (elu, selu, the clamp of general_relu) and on a geometric
ladder of scales, which stays accurate when √q is far from φ's own scale (tanh at q = 1e4).
φ and φ' are evaluated on the registered torch module itself, in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from actstat.activations import Activation, hermite_rule

# |χ₁ - 1| within this is critical: a gradient then changes by at most 1.05^L over L layers,
# and a real Kaiming draw (σ_w² = 2 · (1 ± 0.02)) reads as the critical scheme it is
CRITICAL_BAND = 0.05
GH_NODES = 96
GH_MAX_SQRT_Q = 2.0  # Gauss–Hermite resolves smooth φ(√q z) while √q is about φ's own scale
LEGENDRE_NODES = 24
MAX_ITERATIONS = 5000
GROWTH_LIMIT = 1e6  # q beyond this many times its start (or 1): no finite fixed point


@dataclass(frozen=True)
class Expected:
    pre_std: float | None
    post_mean: float | None
    post_std: float | None


@dataclass(frozen=True)
class Phase:
    chi1: float | None
    q_star: float | None  # None: no finite fixed point
    phase: str  # ordered, critical, chaotic


class Moments:
    """E[φ(y)], E[φ(y)²], E[φ'(y)²] for y ~ N(0, q), for one activation."""

    def __init__(self, activation: Activation):
        self.activation = activation
        self.module = activation.module()
        self._gh = hermite_rule(GH_NODES)
        self._gl = _legendre_rule(LEGENDRE_NODES)

    def phi(self, y: np.ndarray, slope: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """φ(y) and (with `slope`) φ'(y), elementwise, from the torch module (autograd for φ')."""
        x = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))
        if not slope:
            with torch.no_grad():
                return self.module(x).numpy(), None
        x.requires_grad_(True)
        with torch.enable_grad():
            out = self.module(x)
            (grad,) = torch.autograd.grad(out.sum(), x)
        return out.detach().numpy(), grad.numpy()

    def __call__(self, q: float, slope: bool = True) -> tuple[float, float, float]:
        """(E[φ], E[φ²], E[φ'²]) at variance q; without `slope` the last is NaN (no autograd)."""
        if not math.isfinite(q):
            return math.nan, math.nan, math.nan
        if self.activation.gaussian is not None:
            return self.activation.gaussian(max(q, 0.0))
        if q <= 0:
            y, w = np.zeros(1), np.ones(1)
        elif not self.activation.kinks and math.sqrt(q) <= GH_MAX_SQRT_Q:
            nodes, weights = self._gh
            y, w = math.sqrt(2.0 * q) * nodes, weights / math.sqrt(math.pi)
        else:
            y, w = self._composite(math.sqrt(q))
        value, derivative = self.phi(y, slope)
        return (float(np.sum(w * value)), float(np.sum(w * value**2)),
                float(np.sum(w * derivative**2)) if slope else math.nan)

    def _composite(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights (Gaussian density included) of composite Gauss–Legendre on
        [-10 s, 10 s], with breakpoints at the kinks and at ±(a geometric ladder of scales)."""
        reach = 10.0 * s
        small = min(s, 1.0) / 64.0
        ladder = np.exp(np.linspace(math.log(small), math.log(reach), 28))  # geometric
        points = np.concatenate([-ladder, [0.0], ladder,
                                 [k for k in self.activation.kinks if abs(k) < reach]])
        edges = np.unique(np.clip(points, -reach, reach))
        x, w = self._gl
        left, right = edges[:-1, None], edges[1:, None]
        half = (right - left) / 2
        y = (left + right) / 2 + half * x
        weights = half * w * np.exp(-0.5 * (y / s) ** 2) / (s * math.sqrt(2 * math.pi))
        return y.ravel(), weights.ravel()


def expected(activation: Activation, sigma_w2: list[float], sigma_b2: list[float],
             input_second_moment: float) -> list[Expected]:
    """The expected pre std and post mean/std of every hidden layer, by the length map."""
    moments = Moments(activation)
    out = []
    q = math.nan
    for layer, (w2, b2) in enumerate(zip(sigma_w2, sigma_b2)):
        second = input_second_moment if layer == 0 else moments(q, slope=False)[1]
        q = w2 * second + b2
        mean, square, _ = moments(q, slope=False)
        variance = square - mean**2
        out.append(Expected(
            _finite(math.sqrt(q)) if q >= 0 else None,
            _finite(mean),
            _finite(math.sqrt(max(variance, 0.0))) if math.isfinite(variance) else None,
        ))
    return out


def phase(activation: Activation, sigma_w2: float, sigma_b2: float, q_start: float) -> Phase:
    """χ₁ at the fixed point of the length map q -> σ_w² E[φ(√q z)²] + σ_b², reached from
    `q_start` (the last hidden layer's q); None q* when the map grows without bound."""
    moments = Moments(activation)
    q_star = _fixed_point(lambda q: sigma_w2 * moments(q, slope=False)[1] + sigma_b2, q_start)
    q_eval = q_star if q_star is not None else q_start
    chi1 = sigma_w2 * moments(q_eval)[2] if math.isfinite(q_eval) else math.nan
    if not math.isfinite(chi1):
        return Phase(None, None, "chaotic")
    name = "critical" if abs(chi1 - 1) <= CRITICAL_BAND else "ordered" if chi1 < 1 else "chaotic"
    return Phase(chi1, q_star, name)


def _fixed_point(length_map, q_start: float) -> float | None:
    """The fixed point that iterating the map from `q_start` heads to, or None when q grows
    without bound.

    Plain iteration converges linearly, and only algebraically near a marginal fixed point (tanh
    with σ_w² = 1 creeps onto 0 as q_l ≈ 1/(2l)), so every two steps take a safeguarded Aitken
    extrapolation (Steffensen's method): it is kept only when it lies beyond the last iterate in
    the direction of travel and the map still moves the same way there, so it never jumps over a
    fixed point that the plain iteration would stop at. q = 0 counts when the map sends it to
    itself and the iterates head there. Growth past GROWTH_LIMIT times the start (or 1) has no
    finite fixed point beyond it for these asymptotically homogeneous maps.
    """
    if not math.isfinite(q_start) or q_start < 0:
        return None
    zero_fixed = length_map(0.0) == 0.0
    ceiling = GROWTH_LIMIT * max(q_start, 1.0)

    def converged(q: float, nxt: float) -> bool:
        return abs(nxt - q) <= 1e-12 * max(abs(q), 1e-300)

    q, q1 = q_start, None
    for _ in range(MAX_ITERATIONS):
        q1 = length_map(q) if q1 is None else q1
        if not math.isfinite(q1) or q1 > ceiling:
            return None
        if converged(q, q1):
            return q1
        if zero_fixed and q1 < 1e-12:
            return 0.0
        q2 = length_map(q1)
        if not math.isfinite(q2) or q2 > ceiling:
            return None
        if converged(q1, q2):
            return q2
        curvature = q2 - 2 * q1 + q
        guess = q - (q1 - q) * ((q1 - q) / curvature) if curvature != 0 else math.nan
        direction = math.copysign(1.0, q2 - q1)
        if math.isfinite(guess) and guess >= 0 and (guess - q2) * direction > 0:
            moved = length_map(guess)
            if math.isfinite(moved) and (moved - guess) * direction >= 0:
                q, q1 = guess, moved
                continue
        q, q1 = q2, None
    if zero_fixed and q < q_start:
        return 0.0
    return q


@cache
def _legendre_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(nodes)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
