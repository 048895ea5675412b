"""Independent NumPy definitions that the tests check actstat against."""

from __future__ import annotations

import math

import numpy as np

ERF = np.vectorize(math.erf)
SELU_L, SELU_A = 1.0507009873554805, 1.6732632423543772


def trapezoid(y, x) -> float:
    """The trapezoid rule, written out: NumPy 2 calls it np.trapezoid and NumPy 1 np.trapz, and
    the tests run on both (pyproject's floor is numpy 1.24)."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def softplus(x, beta=1.0):
    return np.logaddexp(0.0, beta * x) / beta


# independent NumPy definitions, from the papers / torch's documented formulas
NUMPY = {
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "general_relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + ERF(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "selu": lambda x: SELU_L * np.where(x > 0, x, SELU_A * (np.exp(x) - 1)),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "softplus": softplus,
    "mish": lambda x: x * np.tanh(softplus(x)),
    "identity": lambda x: x,
}
