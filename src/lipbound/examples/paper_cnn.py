"""The paper's 4-layer MNIST CNN (PAPER_NOTES §6c, ``models/mnist_4.py``), input ``1 x 28 x 28``:
conv(1->32, k5, s2) - ReLU - conv(32->64, k3, s2) - ReLU - conv(64->128, k3, s2) - ReLU -
conv(128->10, k2) - flatten. Sizes 28 -> 12 -> 5 -> 2 -> 1.

Untrained: the experiments and benchmarks bound it with PyTorch's default random
initialisation (``random_mnist4``, seed 0). The demo uses the trained digits net of
:mod:`lipbound.examples.demo_net` instead.
"""

from __future__ import annotations

import torch
from torch import nn


def mnist4() -> nn.Sequential:
    """The architecture, with whatever initialisation the global torch seed gives."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, stride=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2), nn.ReLU(),
        nn.Conv2d(128, 10, 2), nn.Flatten(),
    )


def random_mnist4() -> nn.Sequential:
    """``mnist4`` with PyTorch's default initialisation under seed 0 (the same weights every call)."""
    torch.manual_seed(0)
    return mnist4()
