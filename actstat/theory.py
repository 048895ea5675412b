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


# Residual networks (Yang & Schoenholz 2017, "Mean Field Residual Networks: On the Edge of
# Chaos") and normalisation. The stream is tracked by its mean and variance over units and
# samples; see `expected_residual` for the recursion and where it holds.

NORMS = ("none", "layernorm", "rmsnorm", "batchnorm")
NORM_POSITIONS = ("pre", "post")


@dataclass(frozen=True)
class ExpectedMeanStd:
    """The expected mean and std of a vector that is not a Linear's output (a residual stream,
    a normalised vector); None where the theory gives no finite value."""

    mean: float | None
    std: float | None


@dataclass(frozen=True)
class ExpectedBlock:
    """One residual block: what each branch Linear reads (`branch_inputs`: the normalised vector
    where a norm precedes it, else the stream or the previous branch layer's output), each branch
    layer's pre/post (`branch`; a last layer without activation has post = its Linear's output),
    and the block's output `stream` (after the post norm, if any).

    `gradient_growth`: E‖∂L/∂x_l‖² / E‖∂L/∂x_{l+1}‖², the factor by which the block scales a
    squared gradient on its way back (see `expected_residual`); None where it needs more than
    the mean-field second moments (BatchNorm with batch statistics divides each feature by its
    own batch std)."""

    branch_inputs: tuple[ExpectedMeanStd, ...]
    branch: tuple[Expected, ...]
    stream: ExpectedMeanStd
    gradient_growth: float | None


@dataclass(frozen=True)
class ExpectedResidual:
    input_layer: Expected  # the input Linear and its activation: the stream before block 1
    blocks: tuple[ExpectedBlock, ...]


def expected_residual(
    activation: Activation,
    input_second_moment: float,
    input_layer: tuple[float, float],
    blocks: list[list[tuple[float, float]]],
    *,
    alpha: float = 1.0,
    norm: str = "none",
    norm_position: str = "pre",
    norm_every_layer: bool = False,
    last_activation: bool = True,
    eps: float = 1e-5,
    batch_statistics: bool = True,
) -> ExpectedResidual:
    """Mean-field expectations of a residual MLP: x_0 = φ(W_in x + b_in), then per block
    x_{l+1} = x_l + α · branch(x_l) (norm 'none'), x_l + α · branch(norm(x_l)) (pre) or
    norm(x_l + α · branch(x_l)) (post); branch = Linear, φ, ..., Linear[, φ] (`last_activation`).

    `input_layer` and each block's list hold (σ_w², σ_b²) of its Linears, as
    `model.parameter_variances` reads them. `norm_every_layer` puts the (pre) norm before every
    branch Linear instead of the first only. `eps` is the norm's own ε (RMSNorm's default is the
    dtype's machine epsilon); `batch_statistics`: BatchNorm normalises by the batch's statistics
    (training mode); False is evaluation mode at init (running mean 0, variance 1): x / √(1 + ε).

    Recursion, for width -> ∞, i.i.d. zero-mean weights and zero-mean biases, each block's
    weights independent of the stream: every branch pre-activation is N(0, q) with
    q = σ_w² · E[u²] + σ_b² of what it reads (`expected`'s length map). Let m, v be the stream's
    mean and variance over units and samples and β the branch output (mean m_β, variance v_β).
    Its last Linear has fresh zero-mean weights, so given the stream its pre-activation is
    N(0, q) whatever the stream unit is: E[x·β] = m · m_β, and

        m_{l+1} = m_l + α · m_β,        v_{l+1} = v_l + α² · v_β.

    The stream's second moment adds, E[x_{l+1}²] = E[x_l²] + α² E[β²] + 2α m_l m_β: the cross
    term vanishes when the branch ends in a Linear (m_β = 0: zero-mean weights and biases) or in
    an odd φ; with relu after the last Linear it does not. A bias with a non-zero mean (a
    constant bias init) breaks N(0, q) itself: σ_b² = Var(b) then misses its mean.

    Norms, at init (weight 1, bias 0): LayerNorm gives each sample mean 0 and variance
    v/(v + ε) over features, RMSNorm mean m/√(s + ε) and second moment s/(s + ε) (s = m² + v),
    BatchNorm with batch statistics each feature mean 0 and variance V_i/(V_i + ε) over the
    batch, taken as 1: ε against each feature's own batch variance V_i is neglected (1e-5
    relative at unit scale). So a pre-norm branch reads a vector of fixed length whatever the
    depth, its v_β is the same every block, and the stream's variance grows linearly; a post-norm
    stream has fixed length. None marks a value that is not finite (an overflowing map).

    Backward, under the usual independence of a gradient from the forward weights it meets
    (Schoenholz et al. 2017; Yang & Schoenholz 2017): ∂L/∂x_l = (I + α J_β)ᵀ g, and the cross
    term gᵀ J_β g has mean 0 (zero-mean weights), so a block scales E‖g‖² by 1 + α² χ_β, where
    χ_β is the product over branch layers of σ_w² · E[φ'(h)²] (σ_w² alone without φ) and of each
    norm's own factor: LayerNorm's Jacobian is (I − 11ᵀ/n − ŷŷᵀ/n) / √(v + ε), which scales a
    squared gradient by 1/(v + ε) (less 2/n), RMSNorm's by 1/(s + ε), BatchNorm at eval init by
    1/(1 + ε). A post norm multiplies the whole by its factor at the sum. Without a norm or with
    a pre norm the factor is ≥ 1: no block shrinks a gradient.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, not {norm_position!r}")
    if norm_every_layer and (norm == "none" or norm_position != "pre"):
        raise ValueError("norm_every_layer needs a norm at norm_position 'pre'")
    moments = Moments(activation)

    def layer(second_in: float, w2: float, b2: float,
              act: bool) -> tuple[Expected, float, float, float]:
        """One Linear (and φ): its Expected, the mean and second moment of its output, and
        how it scales a squared gradient (σ_w² E[φ'²])."""
        q = w2 * second_in + b2
        if not act:
            return Expected(_sqrt(q), 0.0, _sqrt(q)), 0.0, q, w2
        mean, square, slope = moments(q)
        return (Expected(_sqrt(q), _finite(mean), _sqrt(square - mean**2)), mean, square,
                w2 * slope)

    w2, b2 = input_layer
    first, mean, second, _ = layer(input_second_moment, w2, b2, True)
    out = []
    for variances in blocks:
        pre = norm != "none" and norm_position == "pre"
        chi = norm_gain(norm, mean, second, eps, batch_statistics) if pre else 1.0
        u_mean, u_second = (normalise(norm, mean, second, eps, batch_statistics) if pre
                            else (mean, second))
        inputs, branch = [], []
        for k, (w2, b2) in enumerate(variances):
            if k and pre and norm_every_layer:
                chi *= norm_gain(norm, u_mean, u_second, eps, batch_statistics)
                u_mean, u_second = normalise(norm, u_mean, u_second, eps, batch_statistics)
            inputs.append(_mean_std(u_mean, u_second))
            last = k == len(variances) - 1
            expected_here, u_mean, u_second, gain = layer(u_second, w2, b2,
                                                          act=not last or last_activation)
            chi *= gain
            branch.append(expected_here)
        growth = 1 + alpha**2 * chi if alpha else 1.0  # ReZero: the skip alone
        # means add, and variances add (the cross term is m · m_β, see above)
        variance = second - mean**2 + alpha**2 * (u_second - u_mean**2)
        mean = mean + alpha * u_mean
        second = variance + mean**2
        if norm != "none" and norm_position == "post":
            growth *= norm_gain(norm, mean, second, eps, batch_statistics)
            mean, second = normalise(norm, mean, second, eps, batch_statistics)
        out.append(ExpectedBlock(tuple(inputs), tuple(branch), _mean_std(mean, second),
                                 _finite(growth)))
    return ExpectedResidual(first, tuple(out))


@dataclass(frozen=True)
class ExpectedNormedLayer:
    """One hidden layer of an MLP with a norm in it: the Linear's output, the norm's output
    and the activation's output (pre: Linear, norm, φ; post: Linear, φ, norm)."""

    linear: ExpectedMeanStd
    norm: ExpectedMeanStd
    activation: ExpectedMeanStd


def expected_normed_mlp(
    activation: Activation,
    input_second_moment: float,
    layers: list[tuple[float, float]],
    *,
    norm: str,
    norm_position: str = "pre",
    eps: float = 1e-5,
    batch_statistics: bool = True,
) -> list[ExpectedNormedLayer]:
    """The length map of `expected` through an MLP whose hidden layer k is Linear, norm, φ
    ('pre') or Linear, φ, norm ('post'), each Linear's (σ_w², σ_b²) in `layers`.

    A Linear's output is N(0, q) with q = σ_w² E[u²] + σ_b² of what it reads; the norm maps
    moments as `normalise` says (LayerNorm of N(0, q): mean 0, variance q/(q + ε)), and φ of a
    normalised N(0, q') has `Moments`' mean and second moment at q'. So after a norm every layer
    reads a vector of fixed length, whatever the init's scale: only the first Linear's (and the
    head's) std follow σ_w²."""
    if norm not in NORMS or norm == "none":
        raise ValueError(f"norm must be one of {NORMS[1:]}, not {norm!r}")
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, not {norm_position!r}")
    moments = Moments(activation)
    second = input_second_moment
    out = []
    for w2, b2 in layers:
        q = w2 * second + b2
        linear = _mean_std(0.0, q)
        if norm_position == "pre":
            n_mean, n_second = normalise(norm, 0.0, q, eps, batch_statistics)
            # φ of a norm's output: Gaussian with that variance, shifted by its mean (0 for
            # layernorm and batchnorm; rmsnorm of a zero-mean vector keeps mean 0 too)
            mean, second, _ = moments(n_second - n_mean**2, slope=False)
            out.append(ExpectedNormedLayer(linear, _mean_std(n_mean, n_second),
                                           _mean_std(mean, second)))
        else:
            a_mean, a_second, _ = moments(q, slope=False)
            mean, second = normalise(norm, a_mean, a_second, eps, batch_statistics)
            out.append(ExpectedNormedLayer(linear, _mean_std(mean, second),
                                           _mean_std(a_mean, a_second)))
    return out


def normalise(norm: str, mean: float, second: float, eps: float,
              batch_statistics: bool) -> tuple[float, float]:
    """The mean and second moment of `norm`'s output (weight 1, bias 0) at an input of these
    moments over units and samples (see `expected_residual` for each norm)."""
    variance = second - mean**2
    if norm == "layernorm":
        return 0.0, variance / (variance + eps)
    if norm == "rmsnorm":
        return mean / math.sqrt(second + eps), second / (second + eps)
    if norm == "batchnorm":
        if batch_statistics:
            return 0.0, 1.0
        return mean / math.sqrt(1 + eps), second / (1 + eps)
    return mean, second


def norm_gain(norm: str, mean: float, second: float, eps: float,
              batch_statistics: bool) -> float:
    """How `norm`'s Jacobian scales a squared gradient at an input of these moments (NaN:
    BatchNorm with batch statistics, which needs more than the mean-field moments)."""
    if norm == "layernorm":
        return 1 / (second - mean**2 + eps)
    if norm == "rmsnorm":
        return 1 / (second + eps)
    if norm == "batchnorm":
        return math.nan if batch_statistics else 1 / (1 + eps)
    return 1.0


def _sqrt(square: float) -> float | None:
    """√ of a second moment or variance; rounding can leave one a hair below 0 (a constant)."""
    return _finite(math.sqrt(max(square, 0.0))) if math.isfinite(square) else None


def _mean_std(mean: float, second: float) -> ExpectedMeanStd:
    return ExpectedMeanStd(_finite(mean), _sqrt(second - mean**2))
