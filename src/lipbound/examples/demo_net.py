"""The demo network: a small CNN trained on handwritten digits, and its held-out test split.

Architecture (input ``1 x 8 x 8``, pixels in ``[0, 1]``): conv(1->8, k3, s2, pad 1) - ReLU -
conv(8->16, k3, s2, pad 1) - ReLU - flatten - linear(64->10). Sizes 8 -> 4 -> 2; 1,898
parameters, 192 ReLU units. It was trained by :mod:`lipbound.examples.train_demo` with the
cross-entropy plus lipbound's own Lipschitz regulariser (:func:`lipbound.regularizer`), which
keeps the AutoLip bound small; that also keeps SeqLip close to the true constant (L2 -> L2),
so the default method set brackets it tightly.

Files shipped next to this module (reproduced by ``python -m lipbound.examples.train_demo``):

* ``demo_digits.pt``: the state dict of :func:`digits_cnn`;
* ``demo_digits_test.pt``: the held-out test split, ``{"images": float32 (N, 1, 8, 8) in [0, 1],
  "labels": int64 (N,)}``.

Data: the "Optical Recognition of Handwritten Digits" data set (E. Alpaydin, C. Kaynak, UCI
Machine Learning Repository, 1998, https://doi.org/10.24432/C50P49), licensed CC BY 4.0, as
bundled with scikit-learn (``sklearn.datasets.load_digits``: 1,797 images of 8 x 8 pixels with
values 0..16, here divided by 16). The test split shipped here is a subset of it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INPUT_SHAPE = (1, 8, 8)
WEIGHTS = Path(__file__).with_name("demo_digits.pt")
TEST_SPLIT = Path(__file__).with_name("demo_digits_test.pt")


def digits_cnn() -> nn.Sequential:
    """The architecture (untrained; PyTorch's default initialisation)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64, 10),
    )


def demo_net() -> nn.Sequential:
    """The trained demo network, in eval mode (the shipped weights ``demo_digits.pt``)."""
    model = digits_cnn()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def load_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped held-out test split: images ``(N, 1, 8, 8)`` float32 in ``[0, 1]`` and labels
    ``(N,)`` int64."""
    data = torch.load(TEST_SPLIT, map_location="cpu", weights_only=True)
    return data["images"], data["labels"]
