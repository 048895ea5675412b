"""actstat: per-layer activation statistics of neural networks, before training."""

__version__ = "0.1.0"
