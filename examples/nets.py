"""Example models for `actstat run --model` (docs/models.md): factories that return an nn.Module."""

from torch import nn


def make_cnn(channels: int = 16, classes: int = 10) -> nn.Module:
    """A small CNN for 28×28 images: two Conv2d + BatchNorm2d + ReLU stages, pooling, a head."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * c * 7 * 7, classes),
    )


class Block(nn.Module):
    """x + fc2(relu(fc1(x))): a residual MLP block."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class ResidualMLP(nn.Module):
    """An input layer, `depth` residual blocks and a head, on flat 784-pixel images."""

    def __init__(self, width: int = 128, depth: int = 8, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(784, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))
