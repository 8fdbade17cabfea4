"""The demo network: the paper's 4-layer MNIST CNN (PAPER_NOTES §6c, ``models/mnist_4.py``),
input ``1 x 28 x 28``: conv(1->32, k5, s2) - ReLU - conv(32->64, k3, s2) - ReLU -
conv(64->128, k3, s2) - ReLU - conv(128->10, k2) - flatten. Sizes 28 -> 12 -> 5 -> 2 -> 1.

``demo_cnn()`` loads the bundled weights ``demo_cnn.pt`` when present (see ``make_demo_weights``
in ``examples/``), else a fixed random initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("demo_cnn.pt")


def mnist4() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, stride=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2), nn.ReLU(),
        nn.Conv2d(128, 10, 2), nn.Flatten(),
    )


def demo_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = mnist4()
    if WEIGHTS.is_file():
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model
